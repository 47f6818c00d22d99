"""A load generator that speaks the real Tailscale control protocol.

`python -m bench.loadgen --server-url URL --auth-key KEY --nodes N` registers N
simulated nodes, keeps a streaming map open for each, applies every map
message as tailscaled does, and reports what each client observed.
"""
