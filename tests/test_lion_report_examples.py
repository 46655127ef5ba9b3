"""The Lion report shows what the generator wrote: new instructions beside their seeds."""

from lion_distill.data import RunDir, write_pool
from lion_distill.data.schema import pool_table
from lion_distill.lion.report_examples import examples_section


def test_examples_show_new_instructions_beside_their_seeds(tmp_path):
    run = RunDir(tmp_path)
    assert examples_section(run, [0]) == ["\n## Generated instructions (examples)\n", "No new instructions yet."]
    seeds = pool_table(
        [{"instruction": "Sort these numbers.", "input": "3 1 2"}, {"instruction": "Name a bird.", "input": ""}]
    )
    write_pool(run, "iter_0/cache_pool.parquet", seeds)
    hard_seed, easy_seed = seeds.column("id").to_pylist()
    new = pool_table(
        [
            {
                "instruction": "Sort these words | by length.",
                "input": "bb a ccc",
                "origin": "hard",
                "parent_id": hard_seed,
            },
            {
                "instruction": "Name a bird that cannot fly. " * 10,
                "input": "",
                "origin": "easy",
                "parent_id": easy_seed,
            },
        ]
    )
    write_pool(run, "iter_0/generation/new_instructions.parquet", new)
    section = "\n".join(examples_section(run, [0, 1]))
    assert "| 0 | hard | Sort these numbers. | Sort these words \\| by length. | bb a ccc |" in section
    assert "| 0 | easy | Name a bird. | Name a bird that cannot fly." in section and "…" in section
