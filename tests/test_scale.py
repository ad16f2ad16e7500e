"""What keeps memory flat as slides grow: the border buffer lets go of points row by row with
the same outcome as resolving everything at the end."""

from __future__ import annotations

import numpy as np

from wsi_ocelot.inference.borders import BorderBuffer


def _grid_points(rng, n_rows: int, n_cols: int, core: float, per_tile: int):
    """Points of a grid of tiles (row, col, core box, points with a few duplicates across borders)."""
    tiles = []
    for r in range(n_rows):
        for c in range(n_cols):
            box = np.array([c * core, r * core, (c + 1) * core, (r + 1) * core])
            p = np.column_stack(
                [
                    rng.uniform(box[0] - 3, box[2] + 3, per_tile),
                    rng.uniform(box[1] - 3, box[3] + 3, per_tile),
                    rng.integers(1, 3, per_tile),
                    rng.random(per_tile).round(2),
                ]
            )  # ties in probability too
            tiles.append((r, c, box, p))
    return tiles


def test_border_buffer_released_row_by_row_equals_resolving_at_the_end():
    rng = np.random.default_rng(0)
    tiles = _grid_points(rng, 6, 5, 100.0, 400)
    at_end, streamed = BorderBuffer(radius=4.0, reach=3.0), BorderBuffer(radius=4.0, reach=3.0)
    out_end, out_stream, held_max = [], [], 0
    for k, (r, _, box, p) in enumerate(tiles):
        inside = p[:, 0] > 250
        a, _ = at_end.split(p, inside, box, r)
        b, _ = streamed.split(p, inside, box, r)
        out_end.append(a)
        out_stream.append(b)
        last_of_row = k + 1 == len(tiles) or tiles[k + 1][0] != r
        if last_of_row:
            got, flags, _ = streamed.release(r)
            assert (flags == (got[:, 0] > 250)).all()
            out_stream.append(got)
        held_max = max(held_max, len(streamed))
    total_held = len(at_end)
    got, _, dropped_end = at_end.resolve()
    out_end.append(got)
    got, _, _ = streamed.resolve()
    out_stream.append(got)

    def rows(parts):
        a = np.concatenate(parts)
        return a[np.lexsort((a[:, 3], a[:, 1], a[:, 0]))]

    assert dropped_end > 0
    np.testing.assert_array_equal(rows(out_stream), rows(out_end))
    assert held_max < 0.5 * total_held  # about two rows of six held at a time, not all
