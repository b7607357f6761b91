import json

from hengwen.data.split import split_corpus, write_splits


def conversation(cid, domain, text):
    return {"id": cid, "meta": {"domain": domain},
            "turns": [{"role": "customer", "text": text}, {"role": "agent", "text": "好的，" + text, "labels": []}]}


def corpus():
    items = [conversation(f"c{i}", "telecom" if i % 2 else "banking",
                          f"第{i}个客户的问题是关于账单编号{i * 7919}和套餐变更{i * 104729}的不同事情{i}")
             for i in range(60)]
    items.append(conversation("dup-a", "banking", "信用卡年费怎么收的，首年免年费吗，刷满六次能不能免次年年费"))
    items.append(conversation("dup-b", "banking", "信用卡年费怎么收的，首年免年费吗，刷满六次能不能免次年年费呀"))
    items += [conversation(f"pet{i}", "pets", f"猫粮第{i}批次的问题{i * 31}") for i in range(5)]
    return items


def test_near_duplicates_stay_together_and_test_only_domains_stay_in_test():
    splits, report = split_corpus(corpus(), {"pets"}, dev_share=0.2, test_share=0.2)
    where = {c["id"]: name for name, items in splits.items() for c in items}
    assert where["dup-a"] == where["dup-b"]
    assert all(where[f"pet{i}"] == "test" for i in range(5))
    assert sum(len(items) for items in splits.values()) == len(corpus())
    assert report["highest_cross_split_similarity"] < 0.35
    assert report["near_duplicate_groups"] >= 1


def test_write_splits_writes_three_files_and_a_report(tmp_path):
    source = tmp_path / "all.jsonl"
    source.write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in corpus()), encoding="utf-8")
    report = write_splits([source], tmp_path / "out", ["pets"])
    for name in ("train", "dev", "test"):
        lines = (tmp_path / "out" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == report["conversations"][name]
    assert json.loads((tmp_path / "out" / "split_report.json").read_text())["test_only_domains"] == ["pets"]
