"""Rule check_data: is the dataset at data.<dataset>.path? (manidp.report.datacheck)"""
from manidp.io import write_json
from manidp.report.datacheck import check_dataset
from manidp.report.step import run

sm = snakemake  # noqa: F821 (set by Snakemake)


def main():
    found = check_dataset(sm.wildcards.dataset, sm.params.path, sm.params.key,
                          download=sm.params.download, cache_dir=sm.params.cache_dir)
    write_json(sm.output[0], found)
    print(f"{sm.params.key}: {found['source']}")


run(main, sm.log[0])
