"""Han et al. 2015: unstructured magnitude pruning with retraining (threshold rule, sensitivity, allocation, prune/retrain
rounds), CSR storage and sparse kernels. The whole experiment (train, compress, measure, report) is
`legr.pipeline.magnitude`."""
