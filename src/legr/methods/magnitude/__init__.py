"""Han et al. 2015: unstructured magnitude pruning with retraining, CSR storage, dead-unit removal, experiments."""
