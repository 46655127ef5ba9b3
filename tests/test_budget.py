"""A role's budget_usd is the run's: across stages, iterations and resumed jobs, held to the
spend log that every API actor writes as its requests complete."""

import pytest

from lion_distill.data.rundir import RunDir
from lion_distill.llm.ledger import SpendLog, read_spend, spent_by_role
from lion_distill.llm.ratelimit import Admission


def test_spend_log_records_as_requests_complete(tmp_path):
    run = RunDir(tmp_path / "run")
    log = SpendLog(run, role="teacher", stage="iter_0/imitation", every_s=0.0)  # every request written at once
    log.add(retries=1, failed=False, prompt_tokens=10, completion_tokens=5, cost_usd=0.25)
    assert spent_by_role(run) == {"teacher": 0.25}  # on disk before the stage (or the actor) ends
    # On a local run directory each request is on disk as it completes, whatever `every_s`: a
    # killed actor's log lags it by the requests in flight only.
    slow = SpendLog(run, role="referee", stage="iter_0/discrimination", every_s=3600)
    slow.add(retries=0, failed=True, prompt_tokens=0, completion_tokens=0, cost_usd=0.0)
    slow.add(retries=0, failed=False, prompt_tokens=4, completion_tokens=4, cost_usd=0.5)
    assert spent_by_role(run) == {"teacher": 0.25, "referee": 0.5}
    with open(run.local_path("llm_cache/spend", f"{slow.writer}-000000.open.jsonl"), "a") as f:
        f.write('{"role": "referee", "stage": "iter_0/discrim')  # the line a kill cut short: not counted
    (line,) = [ln for ln in read_spend(run) if ln["role"] == "referee"]
    assert (line["requests"], line["failed"], line["cost_usd"]) == (2, 1, 0.5)
    slow.flush()  # the open part renamed whole into a part, folded into the summary from now on
    (line,) = [ln for ln in read_spend(run) if ln["role"] == "referee"]
    assert (line["requests"], line["failed"], line["cost_usd"]) == (2, 1, 0.5)
    (run.local_path("llm_cache/spend") / "x.jsonl.tmp-1").write_text("half a li")  # a writer killed mid-write
    assert spent_by_role(run) == {"teacher": 0.25, "referee": 0.5}


def test_on_an_object_store_the_spend_log_lags_by_at_most_every_s(s3_bucket):
    run = RunDir(f"{s3_bucket}/runs/spend")
    slow = SpendLog(run, role="referee", stage="s", every_s=3600)
    slow.add(retries=0, failed=False, prompt_tokens=4, completion_tokens=4, cost_usd=0.5)
    assert spent_by_role(run) == {}  # no appends there: written every `every_s`, and at each batch's end
    slow.flush()
    assert spent_by_role(run) == {"referee": 0.5}


def test_the_spend_log_is_summed_incrementally(tmp_path, monkeypatch):
    import lion_distill.llm.ledger as ledger

    run = RunDir(tmp_path / "run")
    opened = []
    real_read = ledger._read_part
    monkeypatch.setattr(
        ledger, "_read_part", lambda rd, path: opened.append(path.rsplit("/", 1)[1]) or real_read(rd, path)
    )
    a = SpendLog(run, role="teacher", stage="s1", every_s=0.0)
    b = SpendLog(run, role="referee", stage="s2", every_s=0.0)
    for _ in range(3):
        a.add(retries=0, failed=False, prompt_tokens=1, completion_tokens=1, cost_usd=0.125)
    b.add(retries=2, failed=True, prompt_tokens=0, completion_tokens=0, cost_usd=0.0)
    assert spent_by_role(run) == {"teacher": 0.375, "referee": 0.0} and len(opened) == 4
    opened.clear()
    assert spent_by_role(run) == {"teacher": 0.375, "referee": 0.0} and opened == []  # nothing new: no part read
    a.add(retries=1, failed=False, prompt_tokens=2, completion_tokens=2, cost_usd=0.25)
    (line,) = [ln for ln in read_spend(run) if ln["role"] == "teacher"]
    assert opened == [f"{a.writer}-000003.jsonl"]  # only the new part
    assert (line["stage"], line["requests"], line["retries"], line["prompt_tokens"], line["cost_usd"]) == (
        "s1",
        4,
        1,
        5,
        0.625,
    )
    # A part after a gap in its writer's seqs (seen before the one before it) is counted, not folded yet.
    gap = run.local_path("llm_cache/spend") / f"{b.writer}-000002.jsonl"
    gap.write_text(
        '{"role": "referee", "stage": "s2", "requests": 1, "retries": 0, "failed": 0, '
        '"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.5}\n'
    )
    assert spent_by_role(run)["referee"] == 0.5 and spent_by_role(run)["referee"] == 0.5
    b.add(retries=0, failed=False, prompt_tokens=1, completion_tokens=1, cost_usd=0.25)  # seq 1 fills the gap
    assert spent_by_role(run) == {"teacher": 0.625, "referee": 0.75}
    assert run.read_json(ledger.SUMMARY)["folded"] == {a.writer: 4, b.writer: 3}
    opened.clear()
    assert spent_by_role(run) == {"teacher": 0.625, "referee": 0.75} and opened == []
    # A lost summary is rebuilt from every part.
    run.local_path(ledger.SUMMARY).unlink()
    assert spent_by_role(run) == {"teacher": 0.625, "referee": 0.75} and len(opened) == 7


def test_a_gate_job_keeps_its_spend_across_stages_and_starts_from_the_log_after_a_restart():
    gate = Admission(6000, 1e9)
    gate.begin("run-1", budget_usd=1.0, spent_usd=0.0)
    grant = gate.lease("run-1", 1, 10, 0.4, 1, 10, 0.4, 1.0, now=0.0)
    assert not grant.refused
    from lion_distill.llm.ratelimit import Report

    gate.release("run-1", Report(usd_spent=0.4), now=0.1)
    gate.begin("run-1", budget_usd=1.0, spent_usd=0.3)  # the next stage: the gate counted more than the log
    assert gate.spent("run-1") == pytest.approx(0.4)
    assert gate.lease("run-1", 1, 10, 0.7, 1, 10, 0.7, 1.0, now=0.2).refused  # 0.4 + 0.7 > 1.0
    fresh = Admission(6000, 1e9)  # a new cluster: only the run directory's spend log remains
    fresh.begin("run-1", budget_usd=1.0, spent_usd=0.9)
    assert fresh.lease("run-1", 1, 10, 0.2, 1, 10, 0.2, 1.0, now=0.0).refused


@pytest.mark.ray
def test_several_stages_and_a_resumed_job_stay_within_one_budget(ray_cluster, tmp_path):
    import ray

    from lion_distill.config.models import OpenAIEndpoint, Parallelism, RoleConfig, SamplingParams
    from lion_distill.lion.report import write_report
    from lion_distill.llm import generate
    from lion_distill.llm.gate import NAMESPACE, gate_name
    from lion_distill.llm.prompts import instruction_messages
    from tests.fixtures.fault_server import FaultServer

    def rows(tag):
        return ray.data.from_items(
            [{"id": f"{tag}{i}", "instruction": f"Budget {tag} {i}", "input": ""} for i in range(8)]
        )

    run = RunDir(tmp_path / "run")
    with FaultServer(latency_s=0.01) as server:
        # About $0.012 a request (4 prompt + 8 completion tokens at $1/1k); $0.15 buys about 12 of 24.
        role = RoleConfig(
            backend="openai",
            model="fake",
            sampling=SamplingParams(max_tokens=8),
            parallelism=Parallelism(replicas=1, batch_size=4),
            openai=OpenAIEndpoint(
                base_url=server.base_url,
                price_per_1k_prompt_tokens=1.0,
                price_per_1k_completion_tokens=1.0,
                budget_usd=0.15,
                max_concurrent_requests=2,
            ),
        )
        records = []
        for stage in ("iter_0/a", "iter_0/b"):
            records.append(
                generate(role, rows(stage[-1]), instruction_messages, stage=stage, role_name="teacher", run_dir=run)[1]
            )
        ray.kill(ray.get_actor(gate_name(role.openai, role.model), namespace=NAMESPACE))  # a new job, a new gate
        records.append(
            generate(role, rows("c"), instruction_messages, stage="iter_1/a", role_name="teacher", run_dir=run)[1]
        )
        charged = (server.usage["prompt_tokens"] + server.usage["completion_tokens"]) / 1000
    a, b, c = records
    assert a.failed_rows == 0 and b.failed_rows > 0  # the second stage ran into what the first had spent
    assert c.api_requests <= 2 and c.failed_rows >= 6  # the resumed job began where the run's spend stood
    spent = sum(line["cost_usd"] for line in read_spend(run))
    assert spent <= 0.15 and spent == pytest.approx(charged) == pytest.approx(a.cost_usd + b.cost_usd + c.cost_usd)
    write_report(run)
    assert f"**${spent:.4f}** over {server.total_hits} requests" in run.local_path("report.md").read_text()
