"""The network on several pairs of a batch in one forward pass.

With a network and ``batch_size > 1`` (default on CUDA), consecutive pairs whose model grids have
the same shape get their velocities from one batched forward pass; a batch that does not fit on
the device falls back to one pair at a time. Everything else (affine, refinement, fields,
writing) stays per pair.
"""

from __future__ import annotations

import time

from ..errors import VoxelMorphRegError


def batched_velocities(model, prepared: list):
    """The network's velocity for each of ``prepared`` (PreparedPair, same model-grid shape), from
    one forward pass; pairs that do not fit together are done one at a time, and a pair that does
    not fit alone gets ``None`` (register_images then runs it with its own CPU fall-back)."""
    import torch

    if not prepared:
        return []
    network = model.module()
    device = model.device

    def forward(group):
        with torch.inference_mode():
            moving = torch.cat([p.moving_t for p in group]).to(device)
            fixed = torch.cat([p.fixed_t for p in group]).to(device)
            velocity = network.velocity(moving, fixed)
            if device.type == "cuda":
                torch.cuda.synchronize()
            # clone(): owned tensors outside inference mode, one per pair
            return [velocity[i : i + 1].clone() for i in range(len(group))]

    try:
        return forward(prepared)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
    velocities = []
    for p in prepared:
        try:
            velocities.append(forward([p]))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            velocities.append(None)
    return [v[0] if v is not None else None for v in velocities]


def prepare_batch(i, images, pairs, wanted, reader, options, model, batch_size, ahead, failed_early, log, should_stop):
    """Prepare pair ``i`` and the next wanted pairs whose model grid has the same shape (up to
    ``batch_size`` in all), run the network on them together; keep the others' results in ``ahead``
    as (PreparedPair, velocity, share of the forward pass, seconds spent on it now).
    Returns pair ``i``'s (PreparedPair, velocity, share, -seconds spent now on the others)."""
    from .register import prepare_pair

    first = prepare_pair(images.fixed, images.moving, options, model, log, should_stop)
    group = [(i, first, first.elapsed)]
    shape = tuple(first.fixed_t.shape)
    other_grid = 0.0
    for j in range(i + 1, len(pairs)):
        if len(group) >= batch_size:
            break
        if not wanted[j] or j in ahead or j in failed_early:
            continue
        other = reader.peek(j)
        if other is None:
            break  # a read error: that pair fails at its turn
        try:
            prepared = prepare_pair(other.fixed, other.moving, options, model, log, should_stop)
        except VoxelMorphRegError as exc:
            failed_early[j] = exc
            continue
        if tuple(prepared.fixed_t.shape) != shape:
            ahead[j] = (prepared, None, None, prepared.elapsed)  # another grid: its own forward pass at its turn
            other_grid = prepared.elapsed
            break
        group.append((j, prepared, prepared.elapsed))
    network_started = time.perf_counter()
    velocities = batched_velocities(model, [g[1] for g in group])
    share = (time.perf_counter() - network_started) / len(group)
    device = model.device.type.upper()
    log(f"network on {len(group)} pairs in one batch on {device} ({share * len(group):.2f} s)" if len(group) > 1 else f"[ 40%] network inference on {device}")
    others = other_grid
    for (j, prepared, elapsed), velocity in zip(group[1:], velocities[1:]):
        ahead[j] = (prepared, velocity, share, elapsed + share)
        others += elapsed + share
    return first, velocities[0], share, -others
