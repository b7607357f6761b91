"""The shipped model on real-looking conversations: clear cases are flagged and clean ones are not."""
import pytest

from hengwen.model.labels import LABELS
from hengwen.serving.runtime import DEFAULT_MODEL_DIR, Scorer

pytestmark = pytest.mark.slow

FLAGGED = [
    ("overbearing", [
        {"role": "customer", "text": "这款扫地机多少钱"},
        {"role": "agent", "text": "亲，活动价1899，带自动集尘"},
        {"role": "customer", "text": "好的 我先自己看看 不急"},
        {"role": "agent", "text": "亲别犹豫啦，今天不下单明天就恢复原价了，您现在就拍吧，我这个月业绩还差一单，就当帮帮我嘛🙏"},
    ]),
    ("vague-expertise", [
        {"role": "customer", "text": "我是过敏体质，做这个光子嫩肤有什么风险吗？哪些人不能做？"},
        {"role": "agent", "text": "亲放心，我们用的是进口设备，医生都特别专业，绝对没有任何副作用，做完就能白，谁都可以做的"},
    ]),
    ("perfunctory", [
        {"role": "customer", "text": "退款申请提交五天了还没到账，订单号 2026051512345678，钱到底退到哪了？"},
        {"role": "agent", "text": "这个不归我们管，退款进度您自己去问银行吧"},
    ]),
    ("cold-follow-up", [
        {"role": "customer", "text": "这台空调能包安装吗", "ts": "2026-05-01T10:00:00+08:00"},
        {"role": "agent", "text": "亲包安装的哦！下单后24小时内师傅联系您，有任何问题随时找我😊", "ts": "2026-05-01T10:00:08+08:00"},
        {"role": "customer", "text": "好 已下单", "ts": "2026-05-01T10:02:00+08:00"},
        {"role": "customer", "text": "装好第二天就不制冷了，一直滴水，怎么办", "ts": "2026-05-06T09:00:00+08:00"},
        {"role": "agent", "text": "自己检查下设置吧", "ts": "2026-05-07T17:30:00+08:00"},
    ]),
]

CLEAN = [
    [{"role": "customer", "text": "请问今天下单什么时候发货"},
     {"role": "agent", "text": "您好，下午四点前付款的订单当天发出，顺丰次日达"}],
    [{"role": "customer", "text": "你们这什么破服务，等了半天"},
     {"role": "agent", "text": "非常抱歉让您久等了，我现在就帮您查，麻烦提供一下订单号"},
     {"role": "customer", "text": "3019283746"},
     {"role": "agent", "text": "查到了，包裹今天上午已到您小区的驿站，取件码 6-2-1057"}],
    [{"role": "customer", "text": "我想退掉没上的私教课"},
     {"role": "agent", "text": "可以的，未上课时按单价退，手续费5%，到前台签一下退课单，三个工作日内原路退回"}],
    [{"role": "customer", "text": "這個行動電源可以帶上飛機嗎"},
     {"role": "agent", "text": "可以的，這款是 10000mAh（37Wh），低於航空規定的 100Wh，記得放隨身行李，不能託運喔"}],
]


@pytest.fixture(scope="module")
def scorer():
    return Scorer(DEFAULT_MODEL_DIR)


@pytest.mark.parametrize("label, turns", FLAGGED, ids=[label for label, _ in FLAGGED])
def test_clear_cases_are_flagged(scorer, label, turns):
    (record,) = scorer.score_records([{"id": "x", "turns": turns}])
    assert label in record["turns"][-1]["labels"], record["turns"][-1]["scores"]


@pytest.mark.parametrize("turns", CLEAN)
def test_clean_replies_are_not_flagged(scorer, turns):
    (record,) = scorer.score_records([{"id": "x", "turns": turns}])
    assert record["labels"] == [], record["scores"]


def test_shipped_model_is_small_and_int8(scorer):
    assert scorer.backend.quantization == "int8"
    assert scorer.backend.path.stat().st_size < 40 * 1024 * 1024
    assert scorer.settings.labels == LABELS
