"""Batch scoring at volume: conversations per second and peak memory with 1 and 2 workers, and an interrupted run
that is resumed with nothing lost.

    .venv/bin/python benchmarks/bench_batch.py            # 20,000 conversations, the shipped int8 model
    .venv/bin/python benchmarks/bench_batch.py --conversations 2000 --model DIR

The conversations are generated here from templates (eight service domains, clean and problem replies, one to
three exchanges, sixty agents in six teams, a month of dates); nothing is copied from anywhere. Every run is a
separate `hengwen score` process, measured from outside: wall time, and peak RSS summed over the process and its
workers (sampled from /proc every 50 ms). The one-worker run is uninterrupted and is the reference; the two-worker
run is stopped with SIGTERM partway and resumed with --resume (so its time includes a second start-up), then checked:
every input once, in input order, labels equal to the reference. Two passes over the data rather than three keep
the benchmark short on two cores. Results go to benchmarks/results/bench_batch.{json,md}.
"""
import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from machine import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
CHINA = timezone(timedelta(hours=8))

# domain: (customer openers, clean agent replies, problem agent replies by label, customer follow-ups)
DOMAINS = {
    "服装电商": (["这件{item}有{size}码吗", "{item}什么时候发货", "我先自己看看", "{item}掉色吗"],
             ["有的，{size}码有货，今天下单明天发顺丰", "下午四点前付款当天发出，次日达", "好的，有需要随时找我"],
             {"overbearing": ["亲再看看嘛，今天不定就没这个价了，您现在下单吧", "亲这款真的很适合您，库存仅剩两件了"],
              "perfunctory": ["自己看详情页", "不知道，以页面为准"]},
             ["好的谢谢", "那我再想想", "不用了谢谢"]),
    "数码售后": (["上周买的{device}坏了，怎么办", "{device}充不进电", "订单{order}还没到货"],
             ["麻烦您提供订单号，我马上帮您登记换货，运费我们出", "先把{device}重启一下，不行我直接帮您转维修专员"],
             {"perfunctory": ["这个不归我们管，您找厂家", "已反馈，请耐心等待"],
              "cold-follow-up": ["等着吧，过几天再说", "改天再说"]},
             ["试过了还是不行", "好的，麻烦尽快", "都三天了还没人回"]),
    "宽带电信": (["宽带又断了，报修也没人来", "套餐能降档吗", "我的手机{phone}欠费了吗"],
             ["抱歉给您添麻烦，师傅今天18点前上门", "可以降档，下个月1号生效，我现在帮您办理"],
             {"perfunctory": ["系统就是这样的", "公司规定，没办法"],
              "cold-follow-up": ["排队吧，到了再说"]},
             ["那到底什么时候能修好", "行吧", "好的"]),
    "医美咨询": (["做{project}有什么风险吗", "过敏体质能做{project}吗", "{project}多久见效"],
             ["过敏体质需要先做皮试，术后一周内避免暴晒，具体请医生面诊评估", "一般三到四次见效，因人而异"],
             {"vague-expertise": ["亲放心，绝对没有任何副作用，谁都可以做", "我们医生特别专业，百分百有效"],
              "overbearing": ["您多大了？结婚了吗？加个微信方便联系"]},
             ["那我考虑一下", "好的，怎么预约", "有证书吗"]),
    "教育培训": (["这个课能保证提分吗", "试听课怎么报名", "退课怎么退"],
             ["提分取决于练习，我们每周有测评和老师反馈，不承诺具体分数", "未上课时按单价退，三个工作日原路退回"],
             {"vague-expertise": ["保证提分，包过的", "百分百提分，零风险"],
              "perfunctory": ["不清楚，你找教务"]},
             ["好的", "那我再问问", "退款什么时候到账"]),
    "家电安装": (["空调能包安装吗", "装好第二天就不制冷了", "师傅什么时候上门"],
             ["包安装的，下单后24小时内师傅联系您", "非常抱歉，我现在就给您预约明天上午上门检修"],
             {"cold-follow-up": ["等着吧，师傅没空", "随便哪天，到了再说"],
              "perfunctory": ["肯定是你自己操作错了"]},
             ["一直滴水怎么办", "好的谢谢", "说好今天来的"]),
    "银行信用卡": (["信用卡年费怎么收", "我的卡{card}被冻结了", "分期手续费多少"],
              ["刷卡满六次免次年年费，我帮您查一下本年进度", "冻结是因为异地交易风控，核实身份后马上解冻"],
              {"perfunctory": ["这是公司规定", "我也没办法"],
               "vague-expertise": ["稳赚不赔的理财，您放心"]},
              ["那怎么解冻", "好的", "手续费太高了"]),
    "外卖平台": (["我的外卖超时一个小时了", "餐洒了能退吗", "骑手联系不上"],
             ["非常抱歉，已为您申请超时赔付，五元红包已到账", "可以的，请拍照上传，我马上为您退款"],
             {"perfunctory": ["你找骑手", "问快递吧"],
              "cold-follow-up": ["再等等吧"]},
             ["什么时候到账", "好的谢谢", "我要投诉"]),
}
FILL = {"item": ["卫衣", "羽绒服", "牛仔裤", "衬衫"], "size": ["S", "M", "L", "XL"],
        "device": ["蓝牙耳机", "平板", "手表", "充电宝"], "order": ["4021998765", "5520193846", "3019283746"],
        "phone": ["13812345678", "13987654321"], "project": ["光子嫩肤", "热玛吉", "水光针"],
        "card": ["6222021234567890"]}


def generate(path, count, seed=7):
    """count conversations from the templates: agents A01-A60 in six teams, a month of dates, 1-3 exchanges."""
    rng = random.Random(seed)
    domains = list(DOMAINS)
    start = datetime(2026, 3, 1, 9, 0, tzinfo=CHINA)
    with open(path, "w", encoding="utf-8") as handle:
        for number in range(count):
            domain = domains[number % len(domains)]
            openers, clean, problems, follow_ups = DOMAINS[domain]
            agent = rng.randrange(60)
            stamp = start + timedelta(days=rng.randrange(31), minutes=rng.randrange(600))
            turns = []
            # Mostly one exchange, as in chat exports; the runtime's cost grows with the agent turns.
            for exchange in range(rng.choices((1, 2, 3), weights=(70, 25, 5))[0]):
                customer = rng.choice(openers if exchange == 0 else follow_ups)
                if rng.random() < 0.25 + agent / 200:  # some agents go wrong more often than others
                    reply = rng.choice(rng.choice(list(problems.values())))
                else:
                    reply = rng.choice(clean)
                late = rng.random() < 0.1  # hours-late replies, which cold-follow-up is about
                gap = timedelta(seconds=rng.choice((3, 9, 26)) * 3600 if late else rng.choice((20, 45, 90)))
                turns += [{"role": "customer", "text": customer.format(**{k: rng.choice(v) for k, v in FILL.items()}),
                           "ts": stamp.isoformat()},
                          {"role": "agent", "text": reply.format(**{k: rng.choice(v) for k, v in FILL.items()}),
                           "ts": (stamp + gap).isoformat()}]
                stamp += gap + timedelta(minutes=rng.randrange(1, 30))
            record = {"id": f"bench-{number:06d}", "meta": {"agent": f"A{agent + 1:02d}", "team": f"T{agent % 6 + 1}",
                                                           "channel": rng.choice(("chat", "app", "phone")),
                                                           "domain": domain, "date": turns[0]["ts"][:10]},
                      "turns": turns}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def tree_rss(pid):
    """Resident memory (bytes) of a process and all its descendants, from /proc."""
    children = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
            except (OSError, IndexError):
                pass
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        stack += children.get(current, [])
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            pass
    return total


def run_measured(command, stop_when=None, stop_signal=signal.SIGTERM):
    """Run a command; returns (exit code, seconds, peak tree RSS). stop_when() -> True sends stop_signal."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    peak, stopped = 0, False
    started = time.perf_counter()

    def sample():
        nonlocal peak, stopped
        while process.poll() is None:
            peak = max(peak, tree_rss(process.pid))
            if stop_when is not None and not stopped and stop_when():
                process.send_signal(stop_signal)
                stopped = True
            time.sleep(0.05)
    sampler = threading.Thread(target=sample)
    sampler.start()
    _, stderr = process.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    if process.returncode not in (0, 130):
        sys.exit(f"{' '.join(command)} failed ({process.returncode}):\n{stderr}")
    return process.returncode, seconds, peak, stderr


def line_count(path):
    if not Path(path).exists():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def check_complete(output, source):
    """The output holds every input conversation once, in input order, each a whole JSON record."""
    ids = [json.loads(line)["id"] for line in Path(source).read_text(encoding="utf-8").splitlines()]
    records = [json.loads(line) for line in Path(output).read_text(encoding="utf-8").splitlines()]
    return {"input": len(ids), "output": len(records), "same_ids_in_order": [r["id"] for r in records] == ids,
            "duplicates": len(records) - len({r["id"] for r in records})}, records


def measure(command, conversations, agent_turns, workers, **stop):
    code, seconds, peak, stderr = run_measured(command, **stop)
    return code, stderr, {"workers": workers, "seconds": round(seconds, 1), "peak_rss_mb": round(peak / 2**20),
                          "conversations_per_second": round(conversations / seconds, 1),
                          "agent_turns_per_second": round(agent_turns / seconds, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--model", help="model folder (default: the shipped model)")
    parser.add_argument("--interrupt-at", type=float, default=0.4, help="share of the output written when stopped")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    results = {"machine": {"cpu": cpu_model(), "cores": cores, "python": platform.python_version(),
                           "onnxruntime": package_version("onnxruntime"), "load_average_at_start": os.getloadavg()},
               "conversations": args.conversations, "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "conversations.jsonl"
        generate(source, args.conversations)
        records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
        agent_turns = sum(1 for r in records for t in r["turns"] if t["role"] == "agent")
        results["agent_turns"] = agent_turns
        results["characters_per_conversation"] = sum(len(t["text"]) for r in records for t in r["turns"]) / len(records)
        del records

        def command(output, workers, *extra):
            return [sys.executable, "-m", "hengwen.serving.cli", "score", str(source), "-o", str(output), "-q",
                    "--quantization", "int8", "--workers", str(workers), *(["--model", args.model] if args.model
                                                                           else []), *extra]

        # One worker, uninterrupted: its output is also the reference for the interrupted run.
        reference = Path(folder) / "one-worker.jsonl"
        _, _, run = measure(command(reference, 1), args.conversations, agent_turns, 1)
        results["runs"].append(run | {"threads_per_worker": cores, "how": "uninterrupted"})
        print(json.dumps(results["runs"][-1]), flush=True)

        # Two workers, stopped with SIGTERM (what a scheduler or `kill` sends) partway, then --resume.
        output = Path(folder) / "two-workers.jsonl"
        target = int(args.conversations * args.interrupt_at)
        code, _, first = measure(command(output, 2), target, agent_turns * args.interrupt_at, 2,
                                 stop_when=lambda: line_count(output) >= target)
        written = line_count(output)
        whole_lines = output.read_bytes().endswith(b"\n")
        code_resumed, resumed_stderr, second = measure(command(output, 2, "--resume"), args.conversations - written,
                                                      agent_turns * (1 - written / args.conversations), 2)
        seconds = first["seconds"] + second["seconds"]
        results["runs"].append({"workers": 2, "threads_per_worker": max(1, cores // 2), "seconds": round(seconds, 1),
                                "peak_rss_mb": max(first["peak_rss_mb"], second["peak_rss_mb"]),
                                "conversations_per_second": round(args.conversations / seconds, 1),
                                "agent_turns_per_second": round(agent_turns / seconds, 1),
                                "how": f"stopped after {written}, resumed (two start-ups)",
                                "parts": [first, second]})
        print(json.dumps(results["runs"][-1]), flush=True)
        check, resumed = check_complete(output, source)
        baseline = [json.loads(line) for line in reference.read_text(encoding="utf-8").splitlines()]
        differences = [abs(a["scores"][label] - b["scores"][label]) for a, b in zip(resumed, baseline)
                       if "scores" in a and "scores" in b for label in a["scores"]]
        results["interrupted"] = {
            "workers": 2, "signal": "SIGTERM", "exit_code": code, "written_when_stopped": written,
            "ends_with_whole_line": whole_lines, "resume_exit_code": code_resumed,
            "resume_summary": resumed_stderr.strip().splitlines()[0] if resumed_stderr.strip() else "", **check,
            "labels_equal_to_one_worker_run": [r.get("labels") for r in resumed] == [r.get("labels") for r in baseline],
            "max_abs_score_difference_to_one_worker_run": max(differences, default=0.0)}
        print(json.dumps(results["interrupted"], ensure_ascii=False), flush=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_batch.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / "bench_batch.md").write_text(markdown(results))
    print(markdown(results))
    ok = check["same_ids_in_order"] and check["duplicates"] == 0 and check["output"] == check["input"]
    return 0 if ok and code == 130 and code_resumed == 0 else 1


def markdown(results):
    machine = results["machine"]
    lines = [f"Batch scoring, {results['conversations']:,} generated conversations "
             f"({results['agent_turns']:,} agent turns, {results['characters_per_conversation']:.0f} characters "
             f"each on average), shipped model, int8 ONNX; {machine['cpu']}, {machine['cores']} cores, "
             f"onnxruntime {machine['onnxruntime']}, Python {machine['python']}; load average (1 min) "
             f"{machine['load_average_at_start'][0]:.2f} at start, {machine['load_average_at_end'][0]:.2f} at end.", "",
             "| workers | threads per worker | run | seconds | conversations/s | agent turns/s | "
             "peak RSS, process tree |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['threads_per_worker']} | {r['how']} | {r['seconds']} | "
              f"{r['conversations_per_second']} | {r['agent_turns_per_second']} | {r['peak_rss_mb']} MB |"
              for r in results["runs"]]
    stop = results["interrupted"]
    lines += ["", f"Interrupted run ({stop['workers']} workers): {stop['signal']} after "
              f"{stop['written_when_stopped']:,} "
              f"conversations were written (exit {stop['exit_code']}, output ends with a whole line: "
              f"{stop['ends_with_whole_line']}); `--resume` (exit {stop['resume_exit_code']}) scored the rest. "
              f"Output: {stop['output']:,} records for {stop['input']:,} inputs, same ids in input order: "
              f"{stop['same_ids_in_order']}, duplicates: {stop['duplicates']}; labels equal to the one-worker run: "
              f"{stop['labels_equal_to_one_worker_run']}, largest score difference "
              f"{stop['max_abs_score_difference_to_one_worker_run']:.4f}.", ""]
    return "\n".join(lines)


def package_version(name):
    from importlib.metadata import version
    return version(name)


if __name__ == "__main__":
    sys.exit(main())
