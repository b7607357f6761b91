"""The four labels of ../shared/labels.md, in the order every model, file and report uses."""

LABELS = ("overbearing", "perfunctory", "vague-expertise", "cold-follow-up")
LABEL2ID = {label: index for index, label in enumerate(LABELS)}
ID2LABEL = dict(enumerate(LABELS))
ROLES = ("agent", "customer", "system")
