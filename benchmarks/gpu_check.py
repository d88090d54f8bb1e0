"""One GPU check of opstylegan, sized for a short lease of one GPU: CUDA correctness, speed, inversion, training.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out $OUT --fmnist .gpu_carry/fashion-mnist   # ~8 min, CUDA
    python benchmarks/gpu_check.py --dry-run --out out/gpu_check --fmnist /usr/share/datasets/fashion-mnist

Parts, in this order (`--only` picks some, in the order given):
  fp16         fp16 blocks with conv_clamp in G and D against fp32 twins; conv_clamp under a 1e5 stress input
  autocast     G and D forward + backward under bf16 and fp16 autocast
  ppl          PPL of a model with fp16 blocks == its fp32 twin (PPL forces fp32), and the unforced control
  projector    `invert` without autocast and under bf16 / fp16 autocast
  torchrun     `torchrun --standalone --nproc_per_node 1 -m opstylegan train` on a tiny generated dataset
  nccl         a one-rank NCCL group: opstylegan's collectives, and training steps through the group path
  resume       exact resume on the device: N steps == N/2 + resume + N/2, and two identical runs compared
  speed_g      G forward + backward at 256 px, preset auto, batch 16: baseline, baseline-grouped, overparam
  speed_train  full training steps, same setting: baseline vs overparam (s/kimg, peak memory, ratios)
  inversion    the protocol (100 images x 1000 steps, 256 px, W): image-steps/s batched, bf16, batch 1
  fmnist       both Fashion-MNIST 32x32 models (small preset) trained side by side in the time left; G_ema of
               each comes back (.tar), a grid of fakes, and FID where the Inception weights are

Every part runs in a worker process under a time box: a part that overruns it is killed and recorded, and a
fresh worker runs the parts after it; a check that raises is recorded with its traceback and the part goes
on. After every part `gpu_check.json` (all figures, tracebacks) and `gpu_check.md` (tables) are rewritten in
the output folder, so whatever finished is there even if the whole command is stopped. The output folder
gets at most 6 files: those two, `gpu_check.log`, the two model .tar files and a PNG.

`--dry-run` runs the same parts on the CPU at toy sizes (tiny preset, 16 px, a few steps; about a minute of
CPU time). The exit status is 0 when no part failed or timed out, 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

PART_NAMES = ("fp16", "autocast", "ppl", "projector", "torchrun", "nccl", "resume", "speed_g", "speed_train",
              "inversion", "fmnist")
# Time boxes in seconds (None: until the budget ends). A part that repeats measurements stops repeating at
# SOFT x its box; the worker is killed at its box + GRACE.
BOXES = {
    "gpu": {"fp16": 40, "autocast": 40, "ppl": 45, "projector": 45, "torchrun": 90, "nccl": 45, "resume": 60,
            "speed_g": 60, "speed_train": 80, "inversion": 75, "fmnist": None},
    "dry": {"fp16": 30, "autocast": 30, "ppl": 30, "projector": 30, "torchrun": 45, "nccl": 30, "resume": 30,
            "speed_g": 30, "speed_train": 30, "inversion": 30, "fmnist": None},
}
BUDGET = {"gpu": 480.0, "dry": 110.0}
GRACE = {"gpu": 15.0, "dry": 10.0}
MIN_START = {"gpu": 20.0, "dry": 5.0}  # a part is skipped when less than this is left of the budget
MIN_START_REST = {"gpu": 60.0, "dry": 10.0}  # the same, for a part that runs until the budget ends
SOFT = 0.75
FORMAT = "opstylegan-gpu-check"
JSON_NAME, MD_NAME, LOG_NAME = "gpu_check.json", "gpu_check.md", "gpu_check.log"


def deadlines(mode: str, box: float | None, start: float, end: float) -> tuple[float, float]:
    """(soft deadline, hard kill time) of a part with time box `box` (None: until the budget's `end`) that
    started at `start`: a repeating part stops repeating at the first; the worker is killed at the second."""
    if box is None:
        return end - GRACE[mode] / 2, end + GRACE[mode]
    return min(start + SOFT * box, end), min(start + box + min(GRACE[mode], box / 2), end + GRACE[mode])


class UsageError(Exception):
    """A bad option; the message names it."""


# ----------------------------------------------------------------------------------------------------------
# Options.

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="folder for the results (default: $OUT)")
    p.add_argument("--fmnist", help="folder with Fashion-MNIST's IDX files (train-images-idx3-ubyte[.gz] and "
                                    "labels); without it the fmnist part is skipped")
    p.add_argument("--dry-run", action="store_true", help="the same parts on the CPU at toy sizes (< 2 minutes)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for all parts (default {BUDGET['gpu']:g}; dry run {BUDGET['dry']:g})")
    p.add_argument("--only", help=f"comma-separated parts to run, in this order (default: all): "
                                  f"{','.join(PART_NAMES)}")
    p.add_argument("--box", action="append", default=[], metavar="PART=SECONDS",
                   help="override a part's time box (repeatable), e.g. --box fmnist=120")
    p.add_argument("--box-scale", type=float, default=1.0, metavar="F",
                   help="multiply the default time boxes and budget by F (a slow or busy machine); --box and "
                        "--budget values are taken as given")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # JSON: the worker process's job (internal)
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Checks the options and returns the run's plan; raises UsageError naming the bad option."""
    mode = "dry" if args.dry_run else "gpu"
    out = args.out or os.environ.get("OUT")
    if not out:
        raise UsageError("give --out DIR (or set $OUT): the folder the results are written to")
    out_path = Path(out)
    if out_path.exists() and not out_path.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    parts = list(PART_NAMES)
    if args.only:
        parts = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in parts if s not in PART_NAMES]
        if unknown or not parts or len(set(parts)) != len(parts):
            raise UsageError(f"--only {args.only!r}: give distinct part names among {', '.join(PART_NAMES)}")
    if not args.box_scale > 0:
        raise UsageError(f"--box-scale must be > 0, got {args.box_scale}")
    boxes = {k: (v * args.box_scale if v is not None else None) for k, v in BOXES[mode].items()}
    for spec in args.box:
        name, _, value = spec.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if name not in PART_NAMES or not seconds > 0:
            raise UsageError(f"--box {spec!r}: expected PART=SECONDS with PART among {', '.join(PART_NAMES)} "
                             f"and SECONDS > 0")
        boxes[name] = seconds
    budget = args.budget if args.budget is not None else BUDGET[mode] * args.box_scale
    if not budget > 0:
        raise UsageError(f"--budget must be > 0 seconds, got {args.budget}")
    fmnist = None
    if args.fmnist:
        fmnist = Path(args.fmnist).resolve()
        if not fmnist.is_dir():
            raise UsageError(f"--fmnist {args.fmnist}: not a folder (expected Fashion-MNIST's IDX files)")
    return {"mode": mode, "out": str(out_path.resolve()), "parts": parts, "boxes": boxes, "budget": budget,
            "fmnist": str(fmnist) if fmnist else None, "command": " ".join(sys.argv)}


# ----------------------------------------------------------------------------------------------------------
# The parent: runs workers, enforces the time boxes, writes the results.

class Run:
    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.mode = plan["mode"]
        self.out = Path(plan["out"])
        self.out.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu_check-"))
        self.t0 = time.time()
        self.end = self.t0 + plan["budget"]
        self.results: dict[str, dict[str, Any]] = {}
        self.env: dict[str, Any] = {}
        self.log_path = self.out / LOG_NAME
        self.log_path.write_text("")

    def say(self, line: str) -> None:
        text = f"[{time.time() - self.t0:6.1f} s] {line}"
        print(text, flush=True)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(text + "\n")

    def record(self, part: str, result: dict[str, Any]) -> None:
        self.results[part] = result
        self.say(f"{part}: {result['status']} ({result.get('seconds', 0):.1f} s) {result.get('summary', '')}")
        self.write()

    def write(self) -> None:
        doc = {"format": FORMAT, "version": 1, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "command": self.plan["command"], "mode": self.mode, "budget_s": self.plan["budget"],
               "elapsed_s": round(time.time() - self.t0, 1), "environment": self.env,
               "parts": {p: self.results[p] for p in self.plan["parts"] if p in self.results}}
        _write_atomic(self.out / JSON_NAME, json.dumps(doc, indent=2, default=str) + "\n")
        _write_atomic(self.out / MD_NAME, markdown(doc))

    def run(self) -> int:
        pending = list(self.plan["parts"])
        try:
            while pending:
                if not self._worker(pending):
                    break
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
        for p in pending:  # only left when a worker could not start at all
            self.record(p, {"status": "failed", "summary": "not run: the worker process could not start",
                            "rows": [], "notes": [], "seconds": 0.0, "output_tail": _tail(self.log_path)})
        self.write()
        print(markdown_summary(self.results, self.plan["parts"]), flush=True)
        bad = [p for p, r in self.results.items() if r["status"] in ("failed", "timeout")]
        return 1 if bad else 0

    def _worker(self, pending: list[str]) -> bool:
        """Runs one worker over `pending` (removing the parts it settles). False if it could not start."""
        events = self.scratch / f"events-{len(self.results)}-{time.time():.0f}.jsonl"
        job = {**self.plan, "parts": pending, "end": self.end, "events": str(events), "scratch": str(self.scratch)}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        src = str(Path(__file__).resolve().parents[1] / "src")
        env["PYTHONPATH"] = os.pathsep.join([src] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        with open(self.log_path, "a", encoding="utf-8") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        offset, current, started, hard = 0, None, 0.0, 0.0
        progressed = False
        while True:
            rc = proc.poll()  # before reading: every event written before an exit is read in this pass
            lines, offset = _read_new(events, offset)
            for ev in lines:
                if ev["event"] == "env":
                    self.env = self.env or ev["env"]
                elif ev["event"] == "usage":
                    _kill(proc)
                    raise UsageError(ev["message"])
                elif ev["event"] == "start":
                    current, started = ev["part"], ev["t"]
                    hard = deadlines(self.mode, self.plan["boxes"][current], started, self.end)[1]
                    self.say(f"{current}: started")
                elif ev["event"] == "done":
                    progressed = True
                    pending.remove(ev["part"])
                    self.record(ev["part"], ev["result"])
                    current = None
            if rc is not None:
                if current is not None:
                    pending.remove(current)
                    self.record(current, {"status": "failed", "rows": [], "notes": [], "seconds": time.time() - started,
                                         "summary": f"the worker process died (exit status {rc})",
                                         "output_tail": _tail(self.log_path)})
                    return True
                return progressed or rc == 0
            if current is not None and time.time() > hard:
                _kill(proc)
                pending.remove(current)
                self.record(current, {"status": "timeout", "rows": [], "notes": [], "seconds": time.time() - started,
                                     "summary": f"killed after its time box ({hard - started:.0f} s)",
                                     "output_tail": _tail(self.log_path)})
                return True
            if current is None and time.time() > self.end + GRACE[self.mode]:
                _kill(proc)
                for p in list(pending):
                    pending.remove(p)
                    self.record(p, {"status": "skipped", "summary": "the budget was spent", "rows": [], "notes": [],
                                    "seconds": 0.0})
                return True
            time.sleep(0.2)


def _read_new(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    if not path.is_file():
        return [], offset
    with open(path, encoding="utf-8") as f:
        f.seek(offset)
        data = f.read()
    complete = data[: data.rfind("\n") + 1]  # a line still being written waits for the next poll
    return [json.loads(line) for line in complete.splitlines() if line.strip()], offset + len(complete.encode())


def _kill(proc: subprocess.Popen) -> None:
    """Ends the worker: SIGTERM (it then stops what its part started in other sessions, such as torchrun and
    the trainer torchrun runs in a session of its own), and SIGKILL to its process group after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    return text[-chars:]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------
# Markdown.

def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v).replace("|", "/").replace("\n", " ")


def markdown_summary(results: dict[str, dict[str, Any]], parts: list[str]) -> str:
    lines = ["| part | status | seconds | summary |", "| --- | --- | ---: | --- |"]
    for p in parts:
        r = results.get(p)
        if r is None:
            lines.append(f"| {p} | not run | - | |")
        else:
            lines.append(f"| {p} | {r['status']} | {r.get('seconds', 0):.1f} | {_fmt(r.get('summary', ''))} |")
    return "\n".join(lines) + "\n"


def _groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by their `check`, in order of first appearance."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["check"], []).append(row)
    return list(groups.values())


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    where = env.get("gpu") or f"CPU ({env.get('cpu_threads', '?')} threads)"
    out = [f"# opstylegan GPU check ({'dry run, CPU' if doc['mode'] == 'dry' else 'CUDA'})", "",
           f"{doc['created_utc']}: {where}; torch {env.get('torch', '?')}, CUDA {env.get('cuda', '-')}, "
           f"opstylegan {env.get('opstylegan', '?')}; budget {doc['budget_s']:g} s, elapsed {doc['elapsed_s']:g} s.",
           "", f"`{doc['command']}`", "", markdown_summary(doc["parts"], list(doc["parts"]))]
    for name, r in doc["parts"].items():
        out.append(f"## {name}\n")
        rows = r.get("rows") or []
        for group in _groups(rows):  # one table per kind of check (rows of one kind share their columns)
            cols: list[str] = []
            for row in group:
                cols += [k for k in row if k not in cols and k not in ("check", "traceback", "all", "error")]
            out.append(f"{group[0]['check']}:\n")
            out.append("| " + " | ".join(cols) + " |")
            out.append("| " + " | ".join("---" for _ in cols) + " |")
            for row in group:
                cells = ["FAILED" if c == "ok" and not row["ok"] else _fmt(row.get(c)) for c in cols]
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
        for row in rows:
            if not row.get("ok", True):
                out.append(f"- FAILED {row['check']}: {_fmt(row.get('error', ''))[:600]}")
        for note in r.get("notes", []):
            out.append(f"- {_fmt(note)}")
        if r.get("traceback"):
            out.append(f"- {r['status']}: {_fmt(r['traceback'].strip().splitlines()[-1])}")
        if r.get("output_tail"):
            out.append("\n```\n" + r["output_tail"][-1500:] + "\n```")
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------
# The worker: runs the parts it is given, reporting through an events file.

def worker(job: dict[str, Any]) -> int:
    events = Path(job["events"])

    def emit(event: str, **data: Any) -> None:
        with open(events, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, **data}, default=str) + "\n")

    def log(line: str) -> None:
        print(line, flush=True)

    import torch

    import gpu_check_parts as P
    import gpu_check_speed

    parts = {**P.CORRECTNESS_PARTS, **gpu_check_speed.MEASURING_PARTS}

    def on_term(_sig: int, _frame: Any) -> None:
        P.stop_children()
        os._exit(143)

    signal.signal(signal.SIGTERM, on_term)

    mode = job["mode"]
    if mode == "gpu" and not torch.cuda.is_available():
        emit("usage", message="no CUDA device here: this check needs one; --dry-run runs the same parts on the "
                              "CPU at toy sizes")
        return 2
    fmnist = Path(job["fmnist"]) if job["fmnist"] else None
    if fmnist is not None:
        from opstylegan.data.idx import IDXError, find_idx_images

        try:
            found = find_idx_images(fmnist, "train")
        except IDXError as e:
            found, why = None, str(e)
        else:
            why = "no train-images-idx3-ubyte[.gz] file in it"
        if found is None:
            emit("usage", message=f"--fmnist {fmnist}: {why}")
            return 2
    device = torch.device("cuda", 0) if mode == "gpu" else torch.device("cpu")
    sizes = P.GPU if mode == "gpu" else P.DRY
    ctx0 = P.Context(device, sizes, job["end"], Path(job["scratch"]), Path(job["out"]), fmnist, log)
    emit("env", env={**P.environment(ctx0), "sizes": dataclasses.asdict(sizes)})
    for part in job["parts"]:
        start = time.time()
        box = job["boxes"][part]
        need = MIN_START_REST[mode] if box is None else MIN_START[mode]
        if job["end"] - start < need:
            emit("done", part=part, result={"status": "skipped", "summary": "the budget was spent", "rows": [],
                                            "notes": [], "seconds": 0.0})
            continue
        soft = deadlines(mode, box, start, job["end"])[0]
        scratch = Path(job["scratch"]) / part
        scratch.mkdir(parents=True, exist_ok=True)
        ctx = P.Context(device, sizes, soft, scratch, Path(job["out"]), fmnist, log)
        emit("start", part=part, t=start)
        log(f"== {part}")
        if os.environ.get("OPSTYLEGAN_GPU_CHECK_STALL") == part:
            # Test hook: this part hangs until its time box kills it, whatever the machine's speed.
            time.sleep(24 * 3600)
        cpu0 = _cpu_seconds()
        try:
            result = parts[part](ctx)
        except Exception as e:  # noqa: BLE001 - recorded; the next part still runs
            tb = traceback.format_exc()
            log(tb)
            result = {"status": "failed", "summary": f"{type(e).__name__}: {e}"[:300], "rows": [], "notes": [],
                      "traceback": tb}
        result["seconds"] = round(time.time() - start, 2)
        result["cpu_s"] = round(_cpu_seconds() - cpu0, 2)  # this process and the children it waited for
        shutil.rmtree(scratch, ignore_errors=True)
        P.free_memory(device)
        emit("done", part=part, result=result)
        if P.is_cuda_fatal(result):
            log("a CUDA error left this process unusable; the next parts run in a fresh worker")
            return 3
    return 0


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    try:
        plan = resolve(args)
        return Run(plan).run()
    except UsageError as e:
        print(f"gpu_check.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
