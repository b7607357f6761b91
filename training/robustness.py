"""Robustness checks (`hengwen eval ... --robustness`): the gold file scored as it is and transformed, and the drop.

Each check rewrites every conversation and keeps its labels; the model keeps its thresholds. Checks:

- s2t, t2s: simplified -> traditional and traditional -> simplified characters (OpenCC).
- typos: commonly confused characters swapped in (的/得, 在/再, 已/以, ...) and neighbouring characters transposed.
- emoji: emoji inserted into turns.
- placeholders: every number replaced with `[数字x]`, as anonymised helpdesk exports do.
- noisy: typos, emoji and placeholders together.
- long_context: unlabelled filler exchanges inserted after the first exchange, so that every later turn has more
  context than the encoder's window (turns and tokens); only the original, annotated turns are evaluated.
- no_timestamps: every `ts` removed (no reply-gap markers can be computed).

Random choices are seeded per conversation (seed and conversation id), so a result does not depend on file order.
"""
import copy
import random
import re
from functools import lru_cache

from ..model.labels import LABELS
from .evaluate import evaluate

DROP_TOLERANCE = 0.03
TYPO_PAIRS = {"的": "得", "得": "的", "地": "的", "在": "再", "再": "在", "已": "以", "以": "已", "做": "作",
              "作": "做", "那": "哪", "哪": "那", "吗": "嘛", "账": "帐", "象": "像", "像": "象", "他": "她",
              "到": "道", "是": "事", "订": "定", "进": "近", "候": "侯", "须": "需", "需": "须"}
TYPO_RATE = 0.25
TRANSPOSE_RATE = 0.2
EMOJI = ("😊", "🙏", "👍", "😂", "😭", "🤔", "💪", "🌹", "😅", "🥰", "😓", "👌")
EMOJI_RATE = 0.5
NUMBER = re.compile(r"\d+(?:[.,:：]\d+)*")
PLACEHOLDER = "[数字x]"
FILLER_EXCHANGES = 10
# Neutral side questions with complete answers: no label applies to them, and none of them is annotated.
FILLER = (
    ("顺便问一下，你们可以开发票吗", "可以开的，下单时在发票栏填写抬头和税号就行"),
    ("发票是电子的还是纸质的", "默认是电子发票，订单完成后发到您预留的邮箱"),
    ("你们周末有人值班吗", "有的，周末也有客服在线，时间是早上九点到晚上十点"),
    ("会员积分在哪里查", "在“我的-会员中心”页面可以看到积分明细"),
    ("积分能抵钱吗", "可以，每一百积分抵一元，结算时勾选使用积分即可"),
    ("收货地址能保存两个吗", "可以的，在地址管理里添加新地址就行，下单时可以选择"),
    ("你们有线下门店吗", "目前主要在线上服务，部分城市有体验店，官网上可以查到地址"),
    ("可以分期付款吗", "支持分期，结算页选择分期付款，按页面提示操作即可"),
    ("快递一般发哪家", "一般发顺丰，偏远地区会改发邮政，发货后会短信通知您"),
    ("联系方式要改的话在哪改", "在“账户设置-联系方式”里修改，改完立即生效"),
    ("好的，我记一下", "好的，这些信息在帮助中心也能查到"),
    ("你们的服务时间是几点到几点", "人工客服每天早上九点到晚上十点在线，其他时间可以留言"),
)


@lru_cache(maxsize=2)
def _converter(direction):
    from opencc import OpenCC
    return OpenCC(direction)


def _typos(text, rng):
    characters = [TYPO_PAIRS[c] if c in TYPO_PAIRS and rng.random() < TYPO_RATE else c for c in text]
    han = [i for i in range(len(characters) - 1)
           if "\u4e00" <= characters[i] <= "\u9fff" and "\u4e00" <= characters[i + 1] <= "\u9fff"]
    if han and rng.random() < TRANSPOSE_RATE:
        i = rng.choice(han)
        characters[i], characters[i + 1] = characters[i + 1], characters[i]
    return "".join(characters)


def _emoji(text, rng):
    if rng.random() >= EMOJI_RATE:
        return text
    # Mostly at the end of a message, sometimes inside it.
    position = len(text) if rng.random() < 0.7 else rng.randrange(len(text) + 1)
    return text[:position] + rng.choice(EMOJI) + text[position:]


def _placeholders(text, rng):
    return NUMBER.sub(PLACEHOLDER, text)


def _rewrite_texts(*rewrites):
    def transform(conversation, rng):
        for turn in conversation["turns"]:
            for rewrite in rewrites:
                turn["text"] = rewrite(turn["text"], rng)
    return transform


def _convert(direction):
    return _rewrite_texts(lambda text, rng: _converter(direction).convert(text))


def _long_context(conversation, rng):
    """Filler exchanges after the first agent reply (and any agent turns right after it), before the next
    customer turn; a conversation that ends with its first exchange stays as it is."""
    turns = conversation["turns"]
    first_agent = next(i for i, turn in enumerate(turns) if turn["role"] == "agent")
    position = first_agent + 1
    while position < len(turns) and turns[position]["role"] == "agent":
        position += 1
    if position == len(turns):
        return
    exchanges = rng.sample(FILLER, min(FILLER_EXCHANGES, len(FILLER)))
    filler = [{"role": role, "text": text} for pair in exchanges for role, text in zip(("customer", "agent"), pair)]
    turns[position:position] = filler


def _no_timestamps(conversation, rng):
    for turn in conversation["turns"]:
        turn.pop("ts", None)


CHECKS = {
    "s2t": _convert("s2t"),
    "t2s": _convert("t2s"),
    "typos": _rewrite_texts(_typos),
    "emoji": _rewrite_texts(_emoji),
    "placeholders": _rewrite_texts(_placeholders),
    "noisy": _rewrite_texts(_typos, _emoji, _placeholders),
    "long_context": _long_context,
    "no_timestamps": _no_timestamps,
}


def transform(conversations, check, seed=7):
    """Transformed deep copies of the conversations (labels kept); the input is not changed."""
    if check not in CHECKS:
        raise ValueError(f"unknown robustness check {check!r} (one of {', '.join(CHECKS)})")
    changed = []
    for conversation in conversations:
        copied = copy.deepcopy(conversation)
        CHECKS[check](copied, random.Random(f"{seed}:{check}:{conversation['id']}"))
        changed.append(copied)
    return changed


def _summary(metrics):
    turn, conversation = metrics["turn"], metrics["conversation"]
    return {"turn_macro_f1": turn["macro_f1"], "conversation_macro_f1": conversation["macro_f1"],
            "clean_false_alarm_rate": turn["clean_false_alarm_rate"],
            "per_label_f1": {label: turn["per_label"][label]["f1"] for label in LABELS}}


def robustness_report(scorer, conversations, checks=None, seed=7, original=None, quiet=True):
    """Turn/conversation macro-F1 of the conversations as they are and after each check, and each drop
    (original minus transformed; positive is worse). `original` reuses an evaluation's metrics of the same data."""
    original = _summary(original or evaluate(scorer, conversations, quiet).metrics)
    report = {"seed": seed, "tolerance": DROP_TOLERANCE, "original": original, "checks": {}}
    for check in checks or CHECKS:
        transformed = transform(conversations, check, seed)
        result = _summary(evaluate(scorer, transformed, quiet).metrics)
        result["conversations_changed"] = sum(a != b for a, b in zip(conversations, transformed))
        result["drop"] = round(original["turn_macro_f1"] - result["turn_macro_f1"], 4)
        result["conversation_drop"] = round(original["conversation_macro_f1"] - result["conversation_macro_f1"], 4)
        result["over_tolerance"] = result["drop"] > DROP_TOLERANCE
        report["checks"][check] = result
    return report


def format_robustness(report):
    original = report["original"]
    lines = [f"robustness (seed {report['seed']}): macro-F1 after each check and its change from the original",
             f"  {'check':14s}{'turn':>7s}{'change':>8s}{'conversation':>14s}{'change':>8s}  conversations changed",
             f"  {'original':14s}{original['turn_macro_f1']:7.3f}{'':8s}{original['conversation_macro_f1']:14.3f}"]
    for check, result in report["checks"].items():
        flag = f"  drops more than {report['tolerance']}" if result["over_tolerance"] else ""
        # + 0.0 turns a negative zero into a zero.
        lines.append(f"  {check:14s}{result['turn_macro_f1']:7.3f}{-result['drop'] + 0.0:+8.3f}"
                     f"{result['conversation_macro_f1']:14.3f}{-result['conversation_drop'] + 0.0:+8.3f}"
                     f"  {result['conversations_changed']:>21d}{flag}")
    return "\n".join(lines)
