"""INT8 graph work that belongs to no single dialect (the layout issue's ``effdeploy/int8/``):
function-preserving rewrites of the FP32 graph that make it quantize better (:mod:`.transforms`)."""
