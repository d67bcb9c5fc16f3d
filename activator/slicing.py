"""How much of a revision one activator may send at once, and which pods are its own (pure).

With several activators in front of a revision each takes a slice of the pods, so that their pod
breakers never double-book a pod: 20 pods and 3 activators give slices of 6 pods at [0, 6), [6, 12),
[12, 18) and leave 2 remnants, pods 18 and 19, which go to activators 0 and 1 (7, 7 and 6 pods).
With cc = 0 there is no per-pod limit to protect, so every activator uses every pod.
"""

from __future__ import annotations

__all__ = ["MAX_CAPACITY", "assigned_indices", "revision_capacity"]

MAX_CAPACITY = 2**31 - 1  # Knative's revisionMaxConcurrency, also the "infinite" capacity for cc = 0


def assigned_indices(num_pods: int, activator_index: int, num_activators: int) -> list[int]:
    """Indices (into the pods sorted by ``ip:port``) that activator ``activator_index`` sends to.

    All pods while this activator is alone, not yet listed (index -1) or there is at most one pod; one
    pod (``index mod pods``) when activators outnumber pods; else an even slice plus maybe a remnant.
    """
    if num_pods <= 0:
        return []
    if num_activators <= 1 or activator_index < 0 or num_pods <= 1:
        return list(range(num_pods))
    if num_activators > num_pods:
        return [activator_index % num_pods]
    size = num_pods // num_activators
    start = activator_index * size
    out = list(range(start, start + size))
    remnants = num_pods % num_activators
    if remnants > activator_index:
        out.append(num_pods - remnants + activator_index)
    return out


def revision_capacity(cc: int, num_activators: int, activator_index: int, pods: int, backends: int) -> int:
    """Requests this activator may have in flight for the revision.

    ``pods`` > 0: pods are addressed one by one and capacity is ``cc`` times this activator's slice.
    ``pods`` == 0: ``backends`` ready pods sit behind one address (ClusterIP) and the activators share
    ``cc * backends`` evenly, integer division, at least 1 (cc 10, 3 pods, 4 activators -> 7 each).
    With any backend and cc = 0, or past 2**31-1, the cap is 2**31-1. No backend -> 0: requests queue.
    """
    if cc < 0:
        raise ValueError(f"containerConcurrency must be >= 0, got {cc}")
    if pods > 0:
        backend_count = pods
        capacity = cc * len(assigned_indices(pods, activator_index, num_activators)) if cc > 0 else 0
    else:
        backend_count = max(0, backends)
        capacity = cc * backend_count
        if capacity > 0:
            capacity = max(1, capacity // max(1, num_activators))
    if backend_count > 0 and (cc == 0 or capacity > MAX_CAPACITY):
        return MAX_CAPACITY
    return capacity
