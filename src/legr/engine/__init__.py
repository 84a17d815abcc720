"""The structural engine: exact cost model, pruning plans, surgery on the traced graph, saved artifacts, ONNX
export, latency measurement, dead-unit removal. Method-agnostic: it applies a keep vector, whoever chose it."""
