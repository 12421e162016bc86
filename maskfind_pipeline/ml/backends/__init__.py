"""Inference backends: one model version run by torch, ONNX Runtime or OpenVINO, same answers.

Ours: the `InferenceBackend` interface (uint8 batches in, float32 probabilities out), the graph
every runtime executes (`base.ProbabilityModel`: the model with its preprocessing and sigmoid),
the export cache (`exports`, `cache`: once per model version, atomic, verified on load), the
runtime settings (`runtimes`: threads, streams) and the choice by measurement (`choose`).
The libraries do the rest: torch's exporter writes the ONNX graph, OpenVINO converts it to its
IR and picks its inference precision (bfloat16 where the CPU has it), ONNX Runtime runs float32.

`config` is torch-free (the Dagster definitions import it); the other modules import torch.
"""
