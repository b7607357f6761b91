"""Masking personal data in text shown to people: mobile and landline numbers, resident ID numbers, bank cards,
e-mail addresses.

Every mask keeps the text's length (digits and letters become `*`, separators stay), so character offsets such
as evidence spans still point at the same words after masking.
"""
import re

# Digits not glued to other digits or Latin letters (an order number 2026051512345678 is not a phone number).
_EDGE_BEFORE, _EDGE_AFTER = r"(?<![0-9A-Za-z])", r"(?![0-9A-Za-z])"
_SEPARATOR = r"[ -]?"

ID_NUMBER = re.compile(_EDGE_BEFORE + r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"
                       + _EDGE_AFTER)
MOBILE = re.compile(_EDGE_BEFORE + r"(?:(?:\+|00)?86[ -]?)?1[3-9]\d" + _SEPARATOR + r"\d{4}" + _SEPARATOR + r"\d{4}"
                    + _EDGE_AFTER)
LANDLINE = re.compile(_EDGE_BEFORE + r"0\d{2,3}[ -]\d{7,8}" + _EDGE_AFTER)
CARD = re.compile(_EDGE_BEFORE + r"\d(?:[ -]?\d){15,18}" + _EDGE_AFTER)
# Words that say the next number is a card or account, for numbers that fail the Luhn check.
CARD_CONTEXT = re.compile(r"(?:卡号|银行卡|信用卡|储蓄卡|账号|帐号|card)\D{0,6}$", re.IGNORECASE)
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


def _hide(text, keep_start, keep_end):
    """`text` with its digits and letters from keep_start to len - keep_end replaced by `*`."""
    positions = [i for i, char in enumerate(text) if char.isalnum()]
    hidden = set(positions[keep_start:len(positions) - keep_end])
    return "".join("*" if i in hidden else char for i, char in enumerate(text))


def luhn_valid(digits):
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _mask_cards(text):
    def replace(match):
        digits = re.sub(r"\D", "", match.group())
        if 16 <= len(digits) <= 19 and (luhn_valid(digits) or CARD_CONTEXT.search(text[:match.start()])):
            return _hide(match.group(), 4, 4)
        return match.group()
    return CARD.sub(replace, text)


def mask_personal_data(text):
    """`text` with personal numbers and addresses masked, e.g. 13812345678 -> 138****5678."""
    if not text:
        return text
    text = EMAIL.sub(lambda m: _hide(m.group().split("@")[0], 1, 0) + m.group()[m.group().index("@"):], text)
    text = ID_NUMBER.sub(lambda m: _hide(m.group(), 3, 4), text)
    text = _mask_cards(text)
    # A mobile number keeps its country code, carrier prefix (138) and last four digits.
    text = MOBILE.sub(lambda m: _hide(m.group(), sum(c.isdigit() for c in m.group()) - 8, 4), text)
    return LANDLINE.sub(lambda m: _hide(m.group(), 3, 2), text)
