import pytest

from hengwen.serving.masking import luhn_valid, mask_personal_data


@pytest.mark.parametrize("text, masked", [
    ("我的手机13812345678，尽快回电", "我的手机138****5678，尽快回电"),
    ("电话 +86 138-1234-5678", "电话 +86 138-****-5678"),
    ("打 8613912345678 就行", "打 86139****5678 就行"),
    ("身份证号110101199003071234", "身份证号110***********1234"),
    ("证件 11010519491231002X 核对一下", "证件 110***********002X 核对一下"),
    ("卡号 6222 0212 3456 7890", "卡号 6222 **** **** 7890"),
    ("退到 4111111111111111 这张卡", "退到 4111********1111 这张卡"),  # passes the Luhn check
    ("银行卡：6217000010012345678", "银行卡：6217***********5678"),  # fails Luhn, but is said to be a card
    ("邮箱 zhang.san@example.com 收发票", "邮箱 z****.***@example.com 收发票"),
    ("座机 010-12345678", "座机 010-******78"),
])
def test_personal_data_is_masked(text, masked):
    assert mask_personal_data(text) == masked


@pytest.mark.parametrize("text", [
    "订单号 4021998765 已发货",  # ten digits: an order number, not a phone
    "运单 SF1234567890123",  # glued to letters
    "价格1899元，2026-04-03到货",
    "订单 2026051512345679 退款中",  # 16 digits that fail Luhn, no card words
    "工号 1023 的客服",
])
def test_ordinary_numbers_are_left_alone(text):
    assert mask_personal_data(text) == text


def test_masking_keeps_length_and_is_idempotent():
    text = "联系13812345678或zhang@example.com，卡号6222021234567890，身份证110101199003071234"
    masked = mask_personal_data(text)
    assert len(masked) == len(text)
    assert mask_personal_data(masked) == masked
    for secret in ("13812345678", "zhang@", "6222021234567890", "110101199003071234"):
        assert secret not in masked


def test_luhn():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


@pytest.mark.parametrize("empty", ["", None])
def test_empty_text(empty):
    assert mask_personal_data(empty) == empty
