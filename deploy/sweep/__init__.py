"""``effdeploy sweep``: phi x precision on a profile, measured where it runs — the Pareto front of
latency against accuracy (or multiply-adds), the largest phi a latency budget allows, and how
latency grows with phi on this target. ``points`` is the pure arithmetic, ``run`` builds and times,
``plot`` draws the figure (matplotlib, optional)."""
