"""`/v1/hint` through real HTTP on loopback: PyTorch eager, ONNX fp32 and ONNX int8 side by side, one run.

usage: .venv/bin/python benchmarks/bench_hint.py --model DIR [--threads 0] [--inference-slots 1] [--requests 150]

DIR needs the torch weights and both ONNX files (model.onnx, model.int8.onnx, beside them or in onnx/). For each
engine in turn a `hengwen serve` subprocess is started on 127.0.0.1 and stopped afterwards; on the same inputs
(a 10-turn context of about 250 tokens and two drafts: one the model calls clean, one that fires labels and so
also pays for the evidence spans) it measures p50/p95/p99 latency at concurrency 1, throughput at concurrency 8,
and the server's peak RSS (VmHWM); and, in this process, the backend alone on the clean draft's example (the
floor under the HTTP latency). Each phase stops after --requests requests or --phase-seconds, whichever comes
first. Writes benchmarks/results/bench_hint.json and bench_hint.md (--name changes the file name).
"""
import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from machine import cpu_model

ENGINES = (("torch", "torch", "auto"), ("onnx-fp32", "onnx", "fp32"), ("onnx-int8", "onnx", "int8"))
CONTEXT = [
    ("customer", "你好，我上周在你们店买的空调，型号KFR-35GW，昨天师傅装好了"),
    ("agent", "您好，感谢您的支持！请问空调使用上遇到什么问题了吗？"),
    ("customer", "装好第二天就不怎么制冷了，开到十六度房间还是二十八度"),
    ("agent", "非常抱歉给您带来不便，麻烦提供一下订单号，我查一下安装记录"),
    ("customer", "订单号是2026051512345678，安装师傅姓王，室内机还在滴水"),
    ("agent", "收到，是五月十六号下午安装的，我现在联系售后部门确认一下"),
    ("customer", "好的，家里有老人和小孩，天气特别热，希望尽快处理"),
    ("agent", "明白您的着急，已经提交加急工单，售后一般二十四小时内联系您"),
    ("customer", "昨天也是这么说的，到现在还没人联系我，到底什么时候派人来"),
    ("agent", "抱歉让您久等了，我再帮您催一下，您明天上午还是下午方便？"),
]
DRAFTS = {
    "clean": "我刚跟售后主管确认过，王师傅明天上午九点到十一点上门检修，出发前会先给您打电话",
    "flagged": "这个不归我们管，您自己去问安装师傅吧，我们也没办法，耐心等着就行",
}


def request_body(draft):
    context = [{"role": role, "text": text} for role, text in CONTEXT]
    return json.dumps({"context": context, "draft": draft}, ensure_ascii=False).encode()


def context_tokens(model_dir):
    from hengwen.serving.runtime import load_tokenizer
    tokenizer = load_tokenizer(model_dir)
    return sum(len(tokenizer.encode(text, add_special_tokens=False)) for _, text in CONTEXT)


class Server:
    """`hengwen serve` for one engine as a subprocess on loopback, stopped on exit."""

    def __init__(self, model, engine, quantization, port, threads, slots, log_path):
        command = [sys.executable, "-m", "hengwen.serving.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                   "--model", model, "--engine", engine, "--quantization", quantization, "--threads", str(threads),
                   "--inference-slots", str(slots), "--max-queue", "64"]
        self.port = port
        self.log = open(log_path, "w")
        environment = {k: v for k, v in os.environ.items() if k != "HENGWEN_TOKEN"}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=environment)

    def wait_ready(self, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log.name}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout} s; see {self.log.name}")

    def peak_rss_mb(self):
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return None

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Client:
    """One keep-alive connection; returns (seconds, parsed answer) per request."""

    def __init__(self, port):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def hint(self, body):
        started = time.perf_counter()
        self.connection.request("POST", "/v1/hint", body, {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"/v1/hint answered {response.status}: {payload[:200]!r}")
        return elapsed, payload


def percentiles(latencies):
    values = np.array(latencies) * 1000
    return {f"p{q}_ms": round(float(np.percentile(values, q)), 1) for q in (50, 95, 99)}


def sequential(port, body, requests, seconds):
    client, latencies = Client(port), []
    deadline = time.monotonic() + seconds
    while len(latencies) < requests and time.monotonic() < deadline:
        latencies.append(client.hint(body)[0])
    return {"requests": len(latencies), **percentiles(latencies)}


def concurrent(port, body, requests, seconds, concurrency):
    lock, latencies, errors = threading.Lock(), [], []
    deadline, issued = time.monotonic() + seconds, 0

    def worker():
        nonlocal issued
        client = Client(port)
        while time.monotonic() < deadline:
            with lock:
                if issued >= requests:
                    return
                issued += 1
            try:
                elapsed, _ = client.hint(body)
            except Exception as error:  # a failed request ends this worker; reported below
                errors.append(repr(error))
                return
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"requests": len(latencies), "concurrency": concurrency, "throughput_rps": round(len(latencies) / wall, 2),
            **percentiles(latencies), "errors": errors}


def inference_alone(args, engine, quantization, draft, runs=30):
    """p50 of the backend alone on the clean draft's encoded example, in this process: the floor under the HTTP
    latency (what the server adds is the difference)."""
    from hengwen.serving.runtime import Scorer, pad_batch
    scorer = Scorer(args.model, engine=engine, quantization=quantization, threads=args.threads)
    _, features = scorer.encoder.encode([{"role": role, "text": text} for role, text in CONTEXT], draft={"text": draft})
    batch = pad_batch(features, scorer.encoder.tokenizer.pad_token_id)
    for _ in range(3):
        scorer.backend(batch)
    latencies = []
    for _ in range(runs):
        started = time.perf_counter()
        scorer.backend(batch)
        latencies.append(time.perf_counter() - started)
    return {"tokens": len(features[0]["input_ids"]), **percentiles(latencies)}


def bench_engine(args, name, engine, quantization, port, bodies):
    alone = inference_alone(args, engine, quantization, DRAFTS["clean"])
    server = Server(args.model, engine, quantization, port, args.threads, args.inference_slots,
                    Path(args.log_dir) / f"server-{name}.log")
    try:
        server.wait_ready()
        load_before = os.getloadavg()[0]
        row = {"engine": name, "inference_alone": alone, "scenarios": {}}
        for scenario, body in bodies.items():
            client = Client(port)
            for _ in range(args.warmup):
                _, payload = client.hint(body)
            answer = json.loads(payload)
            row["scenarios"][scenario] = {
                "fired": answer["fired"],
                "evidence_spans": sum(len(answer["labels"][label]["evidence"]) for label in answer["fired"]),
                "concurrency_1": sequential(port, body, args.requests, args.phase_seconds),
                f"concurrency_{args.concurrency}": concurrent(port, body, args.requests, args.phase_seconds,
                                                             args.concurrency),
            }
            print(f"{name:10s} {scenario:8s} {json.dumps(row['scenarios'][scenario], ensure_ascii=False)}",
                  flush=True)
        row["peak_rss_mb"] = server.peak_rss_mb()
        row["load_average_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        return row
    finally:
        server.stop()


def markdown(result, concurrency):
    lines = [f"`/v1/hint` over HTTP on loopback, {result['context_turns']}-turn context of "
             f"{result['context_tokens']} tokens (the encoder keeps {result['max_length']} tokens in all). "
             f"CPU: {result['cpu']}, {result['cores']} cores; server threads: {result['threads']}, "
             f"inference slots: {result['inference_slots']}. {result['date']}.", "",
             f"| engine | draft | fired | p50 ms (c=1) | p95 ms (c=1) | p99 ms (c=1) | req/s (c={concurrency}) "
             f"| p95 ms (c={concurrency}) | peak RSS MB | inference alone p50 ms | 1-min load avg before → after |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for scenario, figures in row["scenarios"].items():
            one, many = figures["concurrency_1"], figures[f"concurrency_{concurrency}"]
            lines.append(f"| {row['engine']} | {scenario} | {', '.join(figures['fired']) or '-'} | {one['p50_ms']} | "
                         f"{one['p95_ms']} | {one['p99_ms']} | {many['throughput_rps']} | {many['p95_ms']} | "
                         f"{row['peak_rss_mb']} | {row['inference_alone']['p50_ms']} | "
                         f"{' → '.join(map(str, row['load_average_before_after']))} |")
    lines += ["", "Targets (issue 4):"] + [f"- {check}" for check in result["targets"]]
    return "\n".join(lines) + "\n"


def targets(rows, concurrency):
    by_engine = {row["engine"]: row for row in rows}
    checks = []
    if "onnx-int8" in by_engine:
        int8 = by_engine["onnx-int8"]
        for scenario, figures in int8["scenarios"].items():
            p95 = figures["concurrency_1"]["p95_ms"]
            checks.append(f"int8 p95 < 15 ms at c=1 ({scenario} draft): {p95} ms, {'met' if p95 < 15 else 'NOT met'}")
        rss = int8["peak_rss_mb"]
        checks.append(f"int8 server peak RSS < 600 MB: {rss} MB, {'met' if rss and rss < 600 else 'NOT met'}")
        if "torch" in by_engine:
            for scenario, figures in int8["scenarios"].items():
                key = f"concurrency_{concurrency}"
                torch = by_engine["torch"]["scenarios"][scenario][key]
                ratio = figures[key]["throughput_rps"] / torch["throughput_rps"]
                checks.append(f"int8 throughput >= 3x torch at c={concurrency} ({scenario} draft): {ratio:.2f}x, "
                              f"{'met' if ratio >= 3 else 'NOT met'}")
    return checks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder with torch weights and both ONNX files")
    parser.add_argument("--threads", type=int, default=0, help="server intra-op threads (0: all cores)")
    parser.add_argument("--inference-slots", type=int, default=1, help="server inferences at the same time")
    parser.add_argument("--requests", type=int, default=150, help="most requests per phase")
    parser.add_argument("--phase-seconds", type=float, default=20, help="most seconds per phase")
    parser.add_argument("--warmup", type=int, default=5, help="requests before each scenario is measured")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--port", type=int, default=8791, help="loopback port of the servers (one at a time)")
    parser.add_argument("--engines", nargs="+", default=[name for name, _, _ in ENGINES],
                        choices=[name for name, _, _ in ENGINES])
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="bench_hint", help="file name of the results, without extension")
    args = parser.parse_args()
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    args.log_dir = tempfile.mkdtemp(prefix="bench_hint-")
    print(f"server logs in {args.log_dir}", flush=True)

    from hengwen.model.classifier import ModelSettings
    bodies = {scenario: request_body(draft) for scenario, draft in DRAFTS.items()}
    rows = [bench_engine(args, name, engine, quantization, args.port, bodies)
            for name, engine, quantization in ENGINES if name in args.engines]
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "model": str(args.model),
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "threads": args.threads or "all cores (onnxruntime/torch default)", "inference_slots": args.inference_slots,
        "context_turns": len(CONTEXT), "context_tokens": context_tokens(args.model),
        "max_length": ModelSettings(args.model).encoding.max_length, "drafts": DRAFTS,
        "python": sys.version.split()[0], "rows": rows, "targets": targets(rows, args.concurrency),
    }
    output = Path(args.output_dir)
    (output / f"{args.name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    table = markdown(result, args.concurrency)
    (output / f"{args.name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
