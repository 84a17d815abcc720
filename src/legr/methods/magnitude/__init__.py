"""Han et al. 2015 (``method: magnitude``, `method.MagnitudePruning`): unstructured magnitude pruning with
retraining (threshold rule, sensitivity, allocation, prune/retrain rounds: `pruning`, `compress`), CSR storage and
sparse kernels (`sparse`); its config section is `config`. The paper's MNIST experiment is a run of this method
(``configs/han_lenet_300_100_mnist.yaml``, ``benchmarks/han_mnist.py``)."""
