"""A randomized fault run against a live stack, and the checker that reads the history afterwards.

The history is the jobs' own event logs (every status change, every logged step with its attempt, every
checkpoint and resume), read back over the API once the faults stop. The checker asserts: no job lost, at most
one live attempt per job (the attempts writing steps never interleave), exactly one terminal state per job, no
resume before the last complete checkpoint, no cancelled job that succeeded, and no trainer left running.
"""

import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from celery import Celery

from shared.queue import RUN_JOB_TASK
from tests.services import StackClient, trainer_pids

TERMINAL = {"succeeded", "failed", "cancelled"}
# Fault kinds and how often each is drawn: mostly the ones that take a trainer away.
FAULTS = {
    "kill_trainer": 3,
    "kill_worker": 2,
    "pause_worker": 1,
    "drain_worker": 2,
    "flush_queue": 1,
    "duplicate": 1,
    "cancel": 1,
}


@dataclass
class Report:
    """What a chaos run did and found."""

    faults: Counter[str] = field(default_factory=Counter)
    jobs: int = 0
    lost: list[str] = field(default_factory=list)
    interleaved: list[str] = field(default_factory=list)
    terminal_counts: dict[str, int] = field(default_factory=dict)
    early_resumes: list[str] = field(default_factory=list)
    cancelled_but_succeeded: list[str] = field(default_factory=list)
    trainers_left: list[int] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        """One paragraph of figures."""
        mean = sum(self.recovery_s) / len(self.recovery_s) if self.recovery_s else 0.0
        double = sum(1 for n in self.terminal_counts.values() if n != 1)
        return (
            f"faults {sum(self.faults.values())} ({dict(self.faults)}), jobs {self.jobs} ({dict(self.outcomes)}), "
            f"lost {len(self.lost)}, interleaved attempts {len(self.interleaved)}, jobs without exactly one "
            f"terminal state {double}, early resumes {len(self.early_resumes)}, cancelled-but-succeeded "
            f"{len(self.cancelled_but_succeeded)}, trainers left {len(self.trainers_left)}, "
            f"mean time to recover {mean:.1f}s over {len(self.recovery_s)} recoveries"
        )


class Chaos:
    """Injects faults into a stack while jobs run."""

    def __init__(self, api: StackClient, redis_url: str, seed: int, lease_s: float) -> None:
        self.api = api
        self.rng = random.Random(seed)
        self.redis = redis.Redis.from_url(redis_url)
        self.celery = Celery(broker=redis_url)
        self.lease_s = lease_s
        self.hit: dict[str, float] = {}  # job id -> when (epoch seconds) a fault last took its trainer away

    def live_jobs(self, ids: list[str]) -> list[dict[str, Any]]:
        """The jobs not yet ended."""
        jobs = [self.api.get(f"/jobs/{job_id}").json() for job_id in ids]
        return [job for job in jobs if job["status"] not in TERMINAL]

    def inject(self, fault: str, ids: list[str]) -> None:
        """Inject one fault (some need a running job; then they pick one at random)."""
        running = [j["id"] for j in self.live_jobs(ids) if j["status"] == "running"]
        stack = self.api.stack
        if fault == "kill_trainer" and running:
            victim = self.rng.choice(running)
            for pid in trainer_pids(victim):
                os.kill(pid, signal.SIGKILL)
            self.hit[victim] = time.time()
        elif fault == "kill_worker":
            stack.kill_worker()
            self.hit.update(dict.fromkeys(running, time.time()))
            stack.restart_worker()
        elif fault == "pause_worker":
            os.killpg(stack.processes["worker"].pid, signal.SIGSTOP)
            time.sleep(self.lease_s + 2)
            os.killpg(stack.processes["worker"].pid, signal.SIGCONT)
            self.hit.update(dict.fromkeys(running, time.time()))
        elif fault == "drain_worker":
            stack.terminate_worker()
            self.hit.update(dict.fromkeys(running, time.time()))
            stack.restart_worker()
        elif fault == "flush_queue":
            self.redis.delete(stack.settings.queue_name)
        elif fault == "duplicate":
            for job_id in self.rng.sample(ids, k=min(2, len(ids))):
                self.celery.send_task(RUN_JOB_TASK, args=[job_id], queue=stack.settings.queue_name, ignore_result=True)
        elif fault == "cancel":
            live = self.live_jobs(ids)
            if live:
                self.api.post(f"/jobs/{self.rng.choice(live)['id']}/cancel")

    def run(self, ids: list[str], faults: int, report: Report) -> None:
        """Inject `faults` faults, 1-3 s apart, each once a job is running (while any job is still live)."""
        kinds, weights = list(FAULTS), list(FAULTS.values())
        # Every kind once (in a random order), so even a short run exercises each; then weighted draws.
        sequence = self.rng.sample(kinds, k=len(kinds))[:faults]
        sequence += self.rng.choices(kinds, weights, k=faults - len(sequence))
        for fault in sequence:
            deadline = time.time() + 10
            while time.time() < deadline and not any(j["status"] == "running" for j in self.live_jobs(ids)):
                time.sleep(0.5)
            self.inject(fault, ids)
            report.faults[fault] += 1
            time.sleep(self.rng.uniform(1.0, 3.0))


def check(api: StackClient, ids: list[str], hit: dict[str, float], report: Report) -> Report:
    """Read every job's history and record each broken invariant in the report."""
    report.jobs = len(ids)
    for job_id in ids:
        job = api.get(f"/jobs/{job_id}").json()
        events = api.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
        report.outcomes[job["status"]] += 1
        if job["status"] not in TERMINAL:
            report.lost.append(job_id)
        statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
        report.terminal_counts[job_id] = sum(1 for s in statuses if s in TERMINAL)
        attempts = [e["data"]["attempt"] for e in events if e["type"] == "progress"]
        if attempts != sorted(attempts):
            report.interleaved.append(job_id)
        if "cancelling" in statuses and job["status"] == "succeeded":
            report.cancelled_but_succeeded.append(job_id)
        saved = 0
        for event in events:
            if event["type"] == "checkpoint":
                saved = max(saved, event["data"]["step"])
            elif event["type"] == "log" and event["message"].startswith("resuming from checkpoint-"):
                if int(event["message"].rsplit("-", 1)[1]) < saved:
                    report.early_resumes.append(job_id)
        report.trainers_left += _trainers_after_settling(job_id)
        if job_id in hit:
            report.recovery_s.append(_recovery(events, hit[job_id]))
    return report


def _trainers_after_settling(job_id: str, settle_s: float = 45) -> list[int]:
    """Trainers of an ended job still alive after the supervisor's exit grace: those are leaks."""
    deadline = time.time() + settle_s
    while (pids := trainer_pids(job_id)) and time.time() < deadline:
        time.sleep(0.5)
    return pids


def _recovery(events: list[dict[str, Any]], fault_at: float) -> float:
    """Seconds from a fault to the job running (or ending) again."""
    for event in events:
        at = datetime.fromisoformat(event["created_at"]).timestamp()
        if at > fault_at and event["type"] == "status" and event["data"]["status"] in ("running", *TERMINAL):
            return at - fault_at
    return 0.0
