"""The TensorRT backend, one module per concern; ``tensorrt`` itself is imported only by
:func:`effdeploy.backends.tensorrt.compat.import_tensorrt`, never at module import.

* ``compat``: the one table of what differs between TensorRT 10.x and 11.x, the shared logger.
* ``plan``: a verified bundle + profile + options -> :class:`~.plan.CompilePlan`, and every refusal
  rule (pure functions; no TensorRT, no GPU).
* ``build``: executes a plan: network, builder config, timing cache, ``engine.plan`` + ``engine.json``.
* ``runner``: :class:`~.runner.TensorRTRunner`, the engine behind :class:`effdeploy.backends.Runner`.
* ``manifest``: ``engine.json`` (write, load, load-time checks) and what this device is (CUDA, GPU,
  Jetson L4T release).

Words: "build" is the bundle's (``effdeploy build``), "compile" the engine's (``effdeploy compile``).
"""
