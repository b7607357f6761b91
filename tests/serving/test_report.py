"""The HTML QA report: content, masking, self-containment, and rendering in headless Chromium."""
import json
import re
from pathlib import Path

import pytest

from hengwen.serving.cli import main
from hengwen.serving.report import LABEL_NAMES, day_of, segments

from ..conftest import headless_chromium

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
PHONE, EMAIL, CARD, ID_NUMBER = "13812345678", "li.lei@example.com", "6222021234567890", "110101199003071234"

# (agent, team, customer text, agent reply): A1 deflects, A2 pushes after a no, A3 answers well.
EXCHANGES = [
    ("A1", "售后组", f"退款五天了还没到账，我的手机{PHONE}", "这个不归我们管，您找银行去"),
    ("A1", "售后组", "耳机坏了怎么办", "不知道，自己看详情页"),
    ("A1", "售后组", f"发票开到邮箱 {EMAIL} 可以吗", "可以的，今天下班前发到您邮箱"),
    ("A2", "售前组", "我先自己看看", "亲再看看嘛，今天不定就没这个价了，您现在下单吧"),
    ("A2", "售前组", "不用了谢谢", "亲这个月业绩还差一点，就当帮我冲个业绩"),
    ("A3", "售前组", "这件有M码吗", "有的，M码适合身高165到172，今天下单明天发货"),
    ("A3", "售前组", f"退款退到卡号 {CARD} 吗", f"是的，原路退回，身份证 {ID_NUMBER} 已核验"),
]


def conversations():
    for number in range(28):
        agent, team, question, reply = EXCHANGES[number % len(EXCHANGES)]
        day = f"2026-03-{1 + number % 4:02d}"
        yield {"id": f"tel-{PHONE}-{number}" if number == 0 else f"conv-{number:03d}",
               "meta": {"agent": agent, "team": team, "date": day},
               "turns": [{"role": "customer", "text": question, "ts": f"{day}T10:00:00+08:00"},
                         {"role": "agent", "text": reply, "ts": f"{day}T10:00:30+08:00"}]}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    source = folder / "in.jsonl"
    source.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations())
                      + "{broken\n", encoding="utf-8")
    assert main(["score", str(source), "-o", str(folder / "scored.jsonl"), "-q", "--engine", "rules",
                 "--keep-text", "--scorecard", "default"]) == 0
    return folder / "scored.jsonl"


@pytest.fixture(scope="module")
def report(scored):
    output = scored.with_name("report.html")
    assert main(["report", str(scored), "-o", str(output), "--top", "5"]) == 0
    return output.read_text(encoding="utf-8")


def test_report_is_self_contained(report):
    assert "<link" not in report and " src=" not in report and "@import" not in report
    assert set(re.findall(r"https?://[^\s'\"]+", report)) == {"http://www.w3.org/2000/svg"}


def test_report_masks_personal_data(report):
    for secret in (PHONE, EMAIL, CARD, ID_NUMBER):
        assert secret not in report
    assert "138****5678" in report  # in the worst conversations and in the masked conversation id
    assert f"tel-{PHONE}" not in report and "tel-138****5678-0" in report


def test_report_has_labels_in_chinese_and_english_charts_and_tables(report):
    for label, name in LABEL_NAMES.items():
        assert name in report and label in report
    assert report.count("<svg class='chart'") == 3  # rates per label, trend by date, QA scores
    assert report.count('<table class="sortable"') == 3  # days, agents, teams
    for agent in ("A1", "A2", "A3"):
        assert f"<td>{agent}</td>" in report
    for team in ("售前组", "售后组"):
        assert f"<td>{team}</td>" in report
    assert all(f"<td>2026-03-0{day}</td>" in report for day in range(1, 5))
    assert "Expecting property name" in report  # why the broken line was not scored


def test_worst_conversations_mark_flagged_turns_and_evidence(report):
    worst = report.split('id="worst"')[1]
    assert worst.count('class="conversation"') == 5
    assert 'class="turn agent flagged"' in worst
    assert re.search(r'<mark class="ev-perfunctory"[^>]*>不归我们管</mark>', worst)


def test_what_to_coach_names_each_agents_most_frequent_label_and_evidence(report):
    coaching = report.split('id="coaching"')[1].split('id="worst"')[0]
    notes = re.findall(r'<div class="note">(.*?)</div>', coaching, re.S)
    by_agent = {re.search(r"<b>(\w+)</b>", note).group(1): note for note in notes}
    assert "perfunctory" in by_agent["A1"] and "不归我们管" in by_agent["A1"]
    assert "overbearing" in by_agent["A2"] and "typical evidence" in by_agent["A2"]
    assert list(by_agent)[0] in ("A1", "A2")  # agents with the most flags first


def test_without_transcripts_the_report_says_how_to_get_them(tmp_path, scored):
    stripped = tmp_path / "scored.jsonl"
    records = [json.loads(line) for line in scored.read_text(encoding="utf-8").splitlines()]
    stripped.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "transcript"}, ensure_ascii=False)
                                + "\n" for r in records), encoding="utf-8")
    assert main(["report", str(stripped), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "--keep-text" in html and "<mark" not in html
    assert "<td>A1</td>" in html and html.count("<svg class='chart'") == 3  # dates come from meta


def test_untimed_conversations_are_counted_and_their_cold_follow_up_called_a_lower_bound(tmp_path, scored, report):
    assert "没有时间戳" not in report  # every conversation of the fixture is timestamped
    records = [json.loads(line) for line in scored.read_text(encoding="utf-8").splitlines()]
    assert {r["timestamps"] for r in records if "turns" in r} == {"all"}
    for record in records[:7]:
        record["timestamps"] = "none"
    untimed = tmp_path / "scored.jsonl"
    untimed.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert main(["report", str(untimed), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "7 通会话（25%）没有时间戳" in html and "lower bound" in html


def test_report_of_an_empty_file_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    assert main(["report", str(empty), "-o", str(tmp_path / "r.html")]) == 2
    assert "no scored conversations" in capsys.readouterr().err


def test_segments_mark_evidence_on_masked_text():
    text = f"请拨{PHONE}，这个不归我们管"
    start = text.index("不归")
    pieces = segments(text, [{"label": "perfunctory", "start": start, "end": start + 5, "text": "不归我们管"}])
    assert pieces == [("请拨138****5678，这个", None), ("不归我们管", "perfunctory")]


@pytest.mark.parametrize("value, day", [("2026-03-01", "2026-03-01"), ("2026/3/1", "2026-03-01"),
                                        ("2026年3月1日", "2026-03-01"), ("2026-03-01T23:59:00+08:00", "2026-03-01"),
                                        ("yesterday", None), ("2026-02-30", None), (None, None)])
def test_day_of(value, day):
    assert day_of(value) == day


@pytest.mark.slow
def test_report_renders_in_headless_chromium(scored, report):
    from selenium.webdriver.common.by import By
    browser = headless_chromium("1280,2000")
    try:
        browser.get(scored.with_name("report.html").as_uri())
        assert browser.title.startswith("恒温质检报告")
        charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
        assert len(charts) == 3 and all(c.size["width"] > 200 and c.size["height"] > 80 for c in charts)
        assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")) >= 4
        assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline.series")
        table = browser.find_element(By.CSS_SELECTOR, "#agents + .scroll table")
        assert table.is_displayed()

        def conversations_column():
            return [int(row.find_elements(By.TAG_NAME, "td")[2].text)
                    for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        heading = table.find_elements(By.CSS_SELECTOR, "thead th")[2]
        heading.click()
        assert conversations_column() == sorted(conversations_column())
        heading.click()
        assert conversations_column() == sorted(conversations_column(), reverse=True)
        assert browser.find_elements(By.CSS_SELECTOR, ".turn.flagged mark")
        ARTIFACTS.mkdir(exist_ok=True)
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1280, min(height + 100, 8000))
        assert browser.save_screenshot(str(ARTIFACTS / "report.png"))
    finally:
        browser.quit()
