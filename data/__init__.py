"""Conversation schema, input readers, corpus statistics and the annotated corpus itself (as files)."""
