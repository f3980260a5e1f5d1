"""Clocks inside vLLM's worker: where the vLLM backend's profiling time goes, within the same
forward passes (drift-free, unlike a ratio of two runs on a shared VM).

`LLM.apply_model` pickles functions by reference, so they live in this importable module (the
worker process inherits the benchmark's sys.path, benchmarks/ included). `instrument` wraps the profiling hooks that
`vllm_worker.install` put on the model with clocks:

    forward      the whole model forward (a pre-hook placed before every other one, a hook after)
    token_lang   the top-level pre-hook that builds each token's language from `positions`
    hooks        each layer's site hook, between a hook placed just before it and one just after;
                 where the site is read inside vLLM's activation op (hook kind act_and_mul), the
                 reduction alone (the op's act(gate) and product are the model's own work)
    transform    the part of the torch hooks before the reduction: for the `gate` site where it
                 is recomputed, act(gate) from the merged gate|up projection's output
    kernel       the reduction into per-segment counts (the CPU kernel, or the whole accumulate
                 of a non-numba kernel)
    fold         the fold of those counts into the accumulators
"""

from __future__ import annotations

import time

from common import clocked_accumulate

from langneurons.profiler.backends import vllm_worker

KEYS = ("forward", "token_lang", "hooks", "kernel", "fold")


def instrument(model) -> None:
    state = vllm_worker.hook_state(model)
    t = dict.fromkeys(KEYS, 0.0)
    marks: dict[str, float] = {}
    handles = []

    def fwd_pre(_m, _a):
        marks["forward"] = time.perf_counter()

    def tl_end(_m, _a):
        if state.active:
            t["token_lang"] += time.perf_counter() - marks["forward"]

    def fwd_post(_m, _a, _o):
        if state.active:
            t["forward"] += time.perf_counter() - marks["forward"]

    handles.append(model.register_forward_pre_hook(fwd_pre, prepend=True))
    handles.append(model.register_forward_pre_hook(tl_end))
    handles.append(model.register_forward_hook(fwd_post))

    def start(*_):
        marks["hook"] = time.perf_counter()

    def end(*_):
        if state.active:
            dt = time.perf_counter() - marks["hook"]
            t["hooks"] += dt
            reduce_time["torch hooks"] += dt
        del marks["hook"]

    hooked = [m for m in model.modules() if m is not model]   # before adding any clock
    for module in [m for m in hooked if m._forward_hooks]:            # output sites (gate)
        handles.append(module.register_forward_hook(start, prepend=True))
        handles.append(module.register_forward_hook(end))
    for module in [m for m in hooked if m._forward_pre_hooks]:        # input sites (down_in)
        handles.append(module.register_forward_pre_hook(start, prepend=True))
        handles.append(module.register_forward_pre_hook(end))

    real_reduce, real_accumulate = state.reduce, state.accumulate
    reduce_time = {"in torch hooks": 0.0, "torch hooks": 0.0}  # seconds

    def reduce(layer, x):
        t0 = time.perf_counter()
        real_reduce(layer, x)
        dt = time.perf_counter() - t0
        if "hook" in marks:
            reduce_time["in torch hooks"] += dt
        else:                 # called from an act_and_mul op: the reduction is all it adds
            t["hooks"] += dt

    state.reduce, state.accumulate = reduce, clocked_accumulate(real_accumulate, t)
    model.bench_timers = (t, reduce_time, handles, real_accumulate)


def read(model) -> dict:
    """The clocks' seconds since `instrument` (transform = torch hooks - their reductions), and
    remove them."""
    t, reduce_time, handles, real_accumulate = model.bench_timers
    for h in handles:
        h.remove()
    state = vllm_worker.hook_state(model)
    del state.reduce
    state.accumulate = real_accumulate
    del model.bench_timers
    return {**t, "transform": reduce_time["torch hooks"] - reduce_time["in torch hooks"]}
