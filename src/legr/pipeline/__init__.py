"""Runs: the configuration schema (`config`), the steps of one run over its folder (`steps`: train base -> rank ->
prune -> fine-tune -> evaluate -> report) and methods under equal budgets (`compare`)."""
