"""Kernel problem definitions: one module per problem.

Each module defines ``TITLE``, ``SIGNATURE``, ``PEAK`` ("bf16" or "fp8": the tensor-core
rate its FLOPs are held against), ``WORKLOADS`` (4-8 public), ``HIDDEN_WORKLOADS`` (2+,
audit only), ``TINY_WORKLOADS`` / ``TINY_HIDDEN_WORKLOADS`` (CPU interpreter shapes),
``make_inputs(w, generator, device)``, ``reference(*inputs)``, ``flops(w)``,
``bytes_moved(w)`` and optionally ``TOLERANCE`` ({output dtype: (atol, rtol)}),
``OUTPUT_TOLERANCE`` ([(atol, rtol)] per output) and ``BANNED`` (extra names the static
scan rejects). kernels_harness.problems loads and validates them.
"""
