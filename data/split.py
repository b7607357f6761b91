"""Split an annotated corpus into train/dev/test so that near-duplicates never cross splits and some
industries appear only in test.

Near-duplicates are found with character 4-gram Jaccard similarity over the whole conversation text
(grams shared by more than 5% of conversations are ignored as template noise); conversations above the
threshold are grouped and each group goes to one split.
"""
import json
import random
from collections import defaultdict
from itertools import combinations
from pathlib import Path

GRAM = 4


def conversation_grams(conversation):
    text = "".join(turn["text"] for turn in conversation["turns"])
    return {text[i:i + GRAM] for i in range(len(text) - GRAM + 1)}


def similarities(gram_sets, min_shared=8):
    """{(i, j): jaccard} for pairs that share at least `min_shared` informative grams."""
    postings = defaultdict(list)
    for index, grams in enumerate(gram_sets):
        for gram in grams:
            postings[gram].append(index)
    common = max(2, len(gram_sets) // 20)
    shared = defaultdict(int)
    for members in postings.values():
        if len(members) <= common:
            for pair in combinations(members, 2):
                shared[pair] += 1
    return {(i, j): count / len(gram_sets[i] | gram_sets[j])
            for (i, j), count in shared.items() if count >= min_shared}


def _groups(size, similar_pairs):
    parent = list(range(size))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in similar_pairs:
        parent[root(i)] = root(j)
    groups = defaultdict(list)
    for i in range(size):
        groups[root(i)].append(i)
    return list(groups.values())


def split_corpus(conversations, test_only_domains, dev_share=0.12, test_share=0.12, near_duplicate=0.35,
                 seed=7):
    """Returns ({split: [conversations]}, report)."""
    gram_sets = [conversation_grams(c) for c in conversations]
    pair_scores = similarities(gram_sets)
    groups = _groups(len(conversations), [p for p, s in pair_scores.items() if s >= near_duplicate])
    rng = random.Random(seed)
    rng.shuffle(groups)
    assignment = {}
    domain_of = lambda i: (conversations[i].get("meta") or {}).get("domain")  # noqa: E731
    pending = []
    for group in groups:
        if any(domain_of(i) in test_only_domains for i in group):
            assignment.update({i: "test" for i in group})
        else:
            pending.append(group)
    total = len(conversations)
    targets = {"test": test_share * total, "dev": dev_share * total}
    counts = {"test": sum(1 for s in assignment.values() if s == "test"), "dev": 0}
    for group in pending:
        split = next((s for s in ("test", "dev") if counts[s] + len(group) <= targets[s]), "train")
        counts[split] = counts.get(split, 0) + len(group)
        assignment.update({i: split for i in group})
    splits = {"train": [], "dev": [], "test": []}
    for index, conversation in enumerate(conversations):
        splits[assignment[index]].append(conversation)
    cross = [(s, i, j) for (i, j), s in pair_scores.items() if assignment[i] != assignment[j]]
    highest = max(cross, default=(0.0, None, None))
    report = {
        "conversations": {name: len(items) for name, items in splits.items()},
        "test_only_domains": sorted(test_only_domains),
        "near_duplicate_threshold": near_duplicate,
        "near_duplicate_groups": sum(1 for g in groups if len(g) > 1),
        "highest_cross_split_similarity": round(highest[0], 3),
        "highest_cross_split_pair": [conversations[highest[1]]["id"], conversations[highest[2]]["id"]]
        if highest[1] is not None else None,
        "method": f"character {GRAM}-gram Jaccard over whole conversations",
    }
    return splits, report


def write_splits(source_files, output_dir, test_only_domains, **options):
    conversations = [json.loads(line) for path in source_files
                     for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    splits, report = split_corpus(conversations, set(test_only_domains), **options)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, items in splits.items():
        with (output_dir / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(c, ensure_ascii=False) + "\n" for c in items)
    (output_dir / "split_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report
