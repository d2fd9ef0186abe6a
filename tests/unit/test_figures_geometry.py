"""The numbers behind the report's pictures (a mutation review of selfres.figures): which plane each
panel shows, its physical extent, the boxes' corners, the display ranges' source volume, the
subsampling for display and the detail's crops. A wrong plane, box or range misleads the reader
without any error; the PNG itself is not pinned."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from selfres import figures


def captured_figures(monkeypatch) -> list:
    """The matplotlib figures drawn from now on, kept and not rendered (their numbers are tested,
    not their pixels; rendering is most of a figure's time)."""
    drawn = []
    monkeypatch.setattr(figures, "_fig_to_png", lambda fig: drawn.append(fig) or b"\x89PNG\r\n\x1a\n")
    return drawn


def _images(fig):
    """(axes, image) of each drawn panel, in drawing order (the colour bar has none)."""
    return [(ax, im) for ax in fig.axes for im in ax.get_images()]


def _grid_volumes():
    """A raw (4, 12, 18) input, ×2 along z; ny // 2 != nx // 2 and every voxel distinct."""
    rng = np.random.default_rng(1)
    raw = rng.random((4, 12, 18)).astype(np.float32) + 10.0
    interp = np.repeat(raw, 2, axis=0) + rng.random((8, 12, 18)).astype(np.float32)
    restored = 3.0 * interp  # its range differs from the raw's and the interpolation's
    return raw, interp, restored


def test_centre_planes_are_the_three_planes_through_the_centre_voxel():
    vol = np.arange(5 * 6 * 9, dtype=np.float32).reshape(5, 6, 9)
    planes = figures._centre_planes(vol)
    np.testing.assert_array_equal(planes["XY"], vol[2])
    np.testing.assert_array_equal(planes["XZ"], vol[:, 3, :])
    np.testing.assert_array_equal(planes["YZ"], vol[:, :, 4])


def test_a_plane_is_subsampled_along_its_own_axes_to_at_most_the_display_size():
    tall = np.zeros((600, 100), np.float32)
    wide = np.zeros((100, 1100), np.float32)
    assert figures._stride_plane(tall).shape == (300, 100)
    assert figures._stride_plane(wide).shape == (100, 367)
    assert figures._factor(512) == 1 and figures._factor(513) == 2 and figures._factor(1100) == 3


def test_projections_are_maxima_along_their_own_axis_in_any_slab_size():
    rng = np.random.default_rng(2)
    vol = rng.random((5, 4, 7)).astype(np.float32)
    vol[-1, 1, 2] = 9.0  # in the last plane only
    want = {"XY": vol.max(0), "XZ": vol.max(1), "YZ": vol.max(2)}
    for slab_bytes in (64 * 2**20, 4 * 7 * 4, 2 * 4 * 7 * 4):  # one slab; one plane a slab; two planes
        got = figures._projections(vol, slab_bytes=slab_bytes)
        for name, plane in want.items():
            np.testing.assert_array_equal(got[name], plane, err_msg=f"{name} {slab_bytes}")


def test_projections_of_a_large_field_are_max_pooled_along_the_right_axes():
    rng = np.random.default_rng(3)
    vol = rng.random((2, 1030, 8)).astype(np.float32)  # y pooled by 3, x and z kept
    got = figures._projections(vol)
    xy = vol.max(0)
    want = np.pad(xy, ((0, 2), (0, 0)), mode="edge").reshape(344, 3, 8).max(1)
    np.testing.assert_array_equal(got["XY"], want)
    assert got["XZ"].shape == (2, 8) and got["YZ"].shape == (2, 344)


def test_display_range_is_the_percentiles_not_the_extremes():
    vals = np.arange(1000, dtype=np.float32)
    lo, hi = figures.display_range(vals.reshape(10, 10, 10))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(vals, [0.2, 99.8])))
    assert 1.0 < lo < 3.0 and 996.0 < hi < 998.0


def test_extent_is_physical_with_the_vertical_axis_downwards():
    assert figures._extent(2, 1, (4, 6, 8), (2.0, 0.5, 0.25)) == (0.0, 2.0, 3.0, 0.0)
    assert figures._extent(1, 0, (4, 6, 8), (2.0, 0.5, 0.25)) == (0.0, 3.0, 8.0, 0.0)


def test_voxel_sizes_filled_in_from_the_shapes():
    vin, vout, unit = figures._voxel_sizes((4, 10, 10), (8, 20, 20), (2.0, 1.0, 1.0), None)
    assert vout == pytest.approx((1.0, 0.5, 0.5)) and unit == "µm"
    vin, vout, unit = figures._voxel_sizes((4, 10, 10), (8, 20, 20), None, (1.0, 0.5, 0.5))
    assert vin == pytest.approx((2.0, 1.0, 1.0)) and unit == "µm"
    vin, vout, unit = figures._voxel_sizes((4, 10, 10), (8, 20, 20), None, None)
    assert vin == pytest.approx((2.0, 2.0, 2.0)) and vout == (1.0, 1.0, 1.0) and unit == "output voxels"


def test_orthoviews_show_each_volumes_centre_planes_at_their_physical_extent(monkeypatch):
    drawn = captured_figures(monkeypatch)
    raw, interp, restored = _grid_volumes()
    vin, vout = (2.0, 0.5, 0.25), (1.0, 0.5, 0.25)
    figures.figure_orthoviews(raw=raw, interp=interp, restored=restored, voxel_size_in=vin,
                              voxel_size_out=vout)
    panels = _images(drawn[-1])
    assert len(panels) == 9
    # 8 × 6 × 4.5 µm (z, y, x) on both grids, each panel's extent from its own grid's shape and voxel size,
    # the input's first voxel centred on 0 (its outer corner at −vin/2: −1, −0.25, −0.125 µm)
    want_ext = {"XY": (-0.125, 4.375, 5.75, -0.25), "XZ": (-0.125, 4.375, 7.0, -1.0), "YZ": (-0.25, 5.75, 7.0, -1.0)}
    for r, vol in enumerate((raw, interp, restored)):
        planes = figures._centre_planes(vol)
        for c, name in enumerate(("XY", "XZ", "YZ")):
            _, im = panels[3 * r + c]
            assert tuple(im.get_extent()) == pytest.approx(want_ext[name]), (r, name)
            np.testing.assert_array_equal(np.asarray(im.get_array()), planes[name], err_msg=f"{r} {name}")
            assert im.get_clim() == pytest.approx(figures.display_range(restored)), (r, name)


def test_projections_outline_the_training_and_held_out_boxes_on_the_raw_xy_panel_in_place(monkeypatch):
    drawn = captured_figures(monkeypatch)
    raw, interp, restored = _grid_volumes()
    vin, vout = (2.0, 0.5, 0.25), (1.0, 0.5, 0.25)
    fov = {"train": [[0, 2], [2, 8], [4, 12]], "holdout": [[2, 4], [8, 12], [0, 4]]}
    figures.figure_projections(raw=raw, interp=interp, restored=restored, voxel_size_in=vin,
                               voxel_size_out=vout, train_fov=fov)
    fig = drawn[-1]
    panels = _images(fig)
    # the shared range is the restored projections' (not the raw's)
    ref = figures._projections(restored)
    want = figures.display_range(np.concatenate([p.ravel() for p in ref.values()]))
    assert all(im.get_clim() == pytest.approx(want) for _, im in panels)
    np.testing.assert_array_equal(np.asarray(panels[0][1].get_array()), raw.max(0))
    boxed = [ax for ax in fig.axes if ax.patches]
    assert boxed == [panels[0][0]]  # the raw row's XY panel only
    rects = {p.get_edgecolor()[:3]: p for p in boxed[0].patches}
    red, cyan = rects[(1.0, 0.0, 0.0)], rects[(0.0, 1.0, 1.0)]
    # corners in µm of the input grid (voxel i's centre at i·v), inset by 0.15 (training) and 0.35 (held-out) voxel
    assert red.get_xy() == pytest.approx(((4 - 0.5 + 0.15) * 0.25, (2 - 0.5 + 0.15) * 0.5))
    assert (red.get_width(), red.get_height()) == pytest.approx(((8 - 0.3) * 0.25, (6 - 0.3) * 0.5))
    assert cyan.get_xy() == pytest.approx(((0 - 0.5 + 0.35) * 0.25, (8 - 0.5 + 0.35) * 0.5))
    assert (cyan.get_width(), cyan.get_height()) == pytest.approx(((4 - 0.7) * 0.25, (4 - 0.7) * 0.5))


def test_sample_figures_share_the_restored_volumes_display_range(monkeypatch):
    captured_figures(monkeypatch)
    raw, interp, restored = _grid_volumes()
    figs = figures.sample_figures(raw=raw, interp=interp, restored=restored,
                                  voxel_size_in=(2.0, 0.5, 0.25), voxel_size_out=(1.0, 0.5, 0.25))
    assert figs["display_range"] == pytest.approx(figures.display_range(restored))
    assert {"orthoviews", "projections", "detail"} <= set(figs)


@pytest.mark.parametrize("fov, box", [
    ([0, 3, 4, 20, 5, 21], ((0, 3), (4, 20), (5, 21))),  # six numbers z0, z1, y0, y1, x0, x1
    ((slice(None, 3), slice(4, 20), slice(5, 21)), ((0, 3), (4, 20), (5, 21))),
    ("3:3,4:20,5:21", None),  # an empty box is no box
])
def test_fov_bbox_more_forms(fov, box):
    assert figures.fov_bbox(fov) == box


def test_the_held_out_box_is_read_under_either_key_and_from_an_attribute():
    pairs = [[2, 4], [8, 12], [0, 4]]
    want = ((2, 4), (8, 12), (0, 4))
    assert figures.holdout_bbox({"holdout": pairs}) == want
    assert figures.holdout_bbox({"held_out": pairs}) == want
    assert figures.holdout_bbox(type("Fov", (), {"holdout": pairs})()) == want
    assert figures.holdout_bbox({"train": pairs}) is None


def test_structure_is_found_at_its_voxel_in_a_pooled_field_and_at_its_peak_plane():
    vol = np.zeros((6, 64, 64), np.float32)
    vol[4, 40:44, 20:24] = 1.0
    z, y, x = figures._find_structure(vol)
    assert z == 4 and 40 <= y < 44 and 20 <= x < 24
    big = np.zeros((2, 1100, 600), np.float32)  # projections pooled by 3 along y, 2 along x
    big[1, 695:706, 295:306] = 1.0
    z, y, x = figures._find_structure(big)
    assert z == 1 and abs(y - 700) <= 3 and abs(x - 300) <= 2


def test_the_lateral_detail_crops_one_region_on_both_grids_and_its_line_and_range_are_right(monkeypatch):
    drawn = captured_figures(monkeypatch)
    rng = np.random.default_rng(4)
    raw = rng.random((4, 20, 30)).astype(np.float32)
    raw[2, 9:12, 14:17] += 5.0
    up = np.repeat(np.repeat(raw, 2, 1), 3, 2)  # ×(1, 2, 3): a 40 × 90 output
    restored = 2.0 * up + 1.0
    vin, vout = (1.0, 0.6, 0.9), (1.0, 0.3, 0.3)
    figures.figure_detail(raw=raw, interp=up, restored=restored, voxel_size_in=vin, voxel_size_out=vout)
    fig = drawn[-1]
    (_, im_raw), _, (ax_res, im_res) = _images(fig)
    x0, x1, y1, y0 = im_res.get_extent()
    crop = np.asarray(im_res.get_array())
    assert (x1 - x0, y1 - y0) == pytest.approx((crop.shape[1] * 0.3, crop.shape[0] * 0.3))
    rx0, rx1, ry1, ry0 = im_raw.get_extent()
    raw_crop = np.asarray(im_raw.get_array())
    assert (rx1 - rx0, ry1 - ry0) == pytest.approx((raw_crop.shape[1] * 0.9, raw_crop.shape[0] * 0.6))
    # the raw crop covers the output crop, by less than one input voxel on each side
    assert rx0 <= x0 + 1e-9 and rx1 >= x1 - 1e-9 and x0 - rx0 < 0.9 and rx1 - x1 < 0.9
    assert ry0 <= y0 + 1e-9 and ry1 >= y1 - 1e-9 and y0 - ry0 < 0.6 and ry1 - y1 < 0.6
    assert im_res.get_clim() == pytest.approx(figures.display_range(crop, low=0.5, high=99.9))
    # the profile line at a voxel centre of the output row the profiles read; the raw row beneath it
    # (the input's voxel i centred at i·vin: its outer corner at −0.3 µm in y, −0.45 in x; output voxel j of
    # 0.3 µm centred at (j + 0.5)·0.3 − 0.3)
    line_y = float(ax_res.get_lines()[0].get_ydata()[0])
    y = (line_y + 0.3) / 0.3 - 0.5
    assert y == pytest.approx(round(y))
    profile = fig.axes[3]
    raw_line = next(ln for ln in profile.get_lines() if ln.get_label() == "raw")
    iy, ix0 = int((line_y + 0.3) // 0.6), round((rx0 + 0.45) / 0.9)
    z_raw = 2  # a ×1 z: the acquired plane is the structure's
    np.testing.assert_array_equal(raw_line.get_ydata(), raw[z_raw, iy, ix0:ix0 + raw_crop.shape[1]])
    res_line = next(ln for ln in profile.get_lines() if ln.get_label() == "restored")
    np.testing.assert_array_equal(res_line.get_ydata(),
                                  restored[z_raw, round(y), round((x0 + 0.45) / 0.3):round((x1 + 0.45) / 0.3)])
    # every position in the profile's title has its unit (a walkthrough: "z=103 (raw 102)" beside "z=102 µm");
    # plane 2 of 1 µm is at z = 2 µm, as a viewer shows it
    assert profile.get_title() == f"line profile at z=2 µm (raw 2 µm),\ny={line_y:.4g} µm", profile.get_title()


def test_the_detail_profiles_title_stays_inside_the_figure_with_four_digit_positions(monkeypatch):
    """A walkthrough's confocal nucleus (voxels 0.4994, 0.5119, 0.5119 µm, ×2): the profile's title,
    on one line, ran past the figure's right edge and lost its unit ("y=32.63 µ")."""
    drawn = captured_figures(monkeypatch)
    rng = np.random.default_rng(3)
    raw = rng.random((45, 130, 133)).astype(np.float32)
    raw[22, 63:66, 68:71] += 5.0
    up = np.repeat(np.repeat(np.repeat(raw, 2, 0), 2, 1), 2, 2)
    figures.figure_detail(raw=raw, interp=up, restored=up, voxel_size_in=(0.4994, 0.5119, 0.5119),
                          voxel_size_out=(0.2497, 0.25595, 0.25595))
    fig = drawn[-1]
    profile = fig.axes[3]
    assert all(len(f"{v:.4g}") >= 5 for v in map(float, re.findall(r"=([0-9.]+)", profile.get_title())))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    box = profile.title.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (profile.get_title(), box, fig.bbox.width)


def test_the_axial_detail_is_a_square_in_micrometres_on_the_z_axis_of_each_grid(monkeypatch):
    drawn = captured_figures(monkeypatch)
    rng = np.random.default_rng(5)
    raw = rng.random((16, 40, 200)).astype(np.float32)
    raw[8, 20, 100] += 5.0
    deep = np.repeat(raw, 2, 0)  # 32 output planes of 1 µm; x of 0.25 µm
    figures.figure_detail(raw=raw, interp=deep, restored=deep, voxel_size_in=(2.0, 0.25, 0.25),
                          voxel_size_out=(1.0, 0.25, 0.25))
    (_, im_raw), _, (ax_res, im_res) = _images(drawn[-1])
    x0, x1, z1, z0 = im_res.get_extent()
    crop = np.asarray(im_res.get_array())
    assert z1 - z0 == pytest.approx(crop.shape[0] * 1.0)
    assert abs((z1 - z0) - (x1 - x0)) <= 2.0  # a square in µm (to an output plane each side)
    rz1, rz0 = im_raw.get_extent()[2:]
    assert rz1 - rz0 == pytest.approx(np.asarray(im_raw.get_array()).shape[0] * 2.0)
    # the axial profile is the column under the crop's vertical line (x: the input's voxel i centred at i·0.25)
    x = (float(ax_res.get_lines()[0].get_xdata()[0]) + 0.125) / 0.25 - 0.5
    assert x == pytest.approx(round(x))
    profile = next(ln for ln in drawn[-1].axes[3].get_lines() if ln.get_label() == "restored")
    np.testing.assert_array_equal(profile.get_ydata(), crop[:, round(x) - round((x0 + 0.125) / 0.25)])


def test_the_detail_crop_is_a_zoomth_of_the_field_at_most_its_cap_and_at_least_four_voxels():
    assert figures._detail_half_width(64, 4) == 8
    assert figures._detail_half_width(4096, 4) == figures.DETAIL_MAX_SIDE_PX // 2
    assert figures._detail_half_width(10, 4) == 2  # a tiny field keeps a 4-voxel crop
    assert figures._zoom_shown(800, 64) == 6 and figures._zoom_shown(10, 8) == 1


def test_the_bead_figure_compares_the_output_bead_nearest_the_input_beads_position():
    rng = np.random.default_rng(6)
    raw = rng.random((6, 24, 24)).astype(np.float32)
    restored = np.repeat(raw, 2, 0)
    # the input bead at z=3 is at output z=6.5 (voxel centres); two output candidates 0.4 and 0.45 away
    beads = pd.DataFrame({"volume": ["input", "output", "output"], "z": [3.0, 6.9, 6.05],
                          "y": [11.0, 11.0, 11.0], "x": [15.0, 15.0, 15.0],
                          "fwhm_z": [1.5, 3.0, 5.0], "fwhm_y": 2.0, "fwhm_x": 2.0})
    with pytest.MonkeyPatch.context() as mp:
        drawn = captured_figures(mp)
        figures.figure_beads(raw=raw, restored=restored, bead_table=beads,
                             voxel_size_in=(1.0, 0.5, 0.5), voxel_size_out=(0.5, 0.5, 0.5))
    labels = [ln.get_label() for ln in drawn[-1].axes[0].get_lines()]
    assert "output: FWHM 1.5 µm" in labels, labels  # the bead at 6.9 (3.0 voxels of 0.5 µm)
    # each profile reaches 2.5 FWHM (at least 4 voxels) either side: 2 voxels along y → 5 a side
    dots = next(ln for ln in drawn[-1].axes[1].get_lines() if ln.get_label().startswith("input"))
    np.testing.assert_allclose(dots.get_xdata(), np.arange(-5, 6) * 0.5)


def test_spectra_are_each_scaled_to_their_own_maximum(monkeypatch):
    drawn = captured_figures(monkeypatch)
    figures.figure_spectra({"input": ([0.1, 0.2, 0.3], [8.0, 4.0, 2.0]),
                            "output": ([0.1, 0.2, 0.3, 0.6], [100.0, 50.0, 10.0, 1.0])})
    curves = {ln.get_label(): ln.get_ydata() for ln in drawn[-1].axes[0].get_lines()
              if not ln.get_label().startswith("_")}
    np.testing.assert_allclose(curves["input"], [1.0, 0.5, 0.25])
    np.testing.assert_allclose(curves["output"], [1.0, 0.5, 0.1, 0.01])


def test_max_pooling_pads_with_the_planes_own_values_not_zeros():
    plane = -np.arange(1.0, 21.0).reshape(5, 4)  # negative values (background-subtracted units)
    got = figures._block_max(plane, 2, 3)
    padded = np.pad(plane, ((0, 1), (0, 2)), mode="edge")
    np.testing.assert_array_equal(got, padded.reshape(3, 2, 2, 3).max(axis=(1, 3)))
    assert (got < 0).all()


def test_the_views_read_the_stores_coordinates_the_inputs_translation_included(monkeypatch):
    """A geometry audit: the report's axes counted from the outer corner of the acquisition's first voxel
    (its "acquired plane z=15 µm" was plane 7 at z=14 µm in napari, 2 µm steps) and left out an OME-Zarr
    input's translation (its "z=23 µm" was at 32 µm). Voxel centres now read where the stores put them:
    the acquisition's at translation + i·v, the output's at the restored store's translation
    (:func:`selfres.pipeline.grid_origin`) + j·v."""
    from selfres.pipeline import at_voxel_size, grid_origin

    drawn = captured_figures(monkeypatch)
    raw, interp, restored = _grid_volumes()  # (4, 12, 18) input, (8, 12, 18) output
    vin, vout = (2.0, 0.5, 0.25), (1.0, 0.5, 0.25)
    origin_voxels = (5.0, 2.0, -4.0)  # an OME-Zarr translation of (10, 1, -1) µm
    origin_um = at_voxel_size(origin_voxels, vin)
    out0 = grid_origin(vin, vout, origin_um)  # the restored store's first voxel centre
    figures.figure_orthoviews(raw=raw, interp=interp, restored=restored, voxel_size_in=vin,
                              voxel_size_out=vout, origin_voxels=origin_voxels)
    panels = _images(drawn[-1])
    for r, (v, first) in enumerate(((vin, origin_um), (vout, out0), (vout, out0))):
        for c, (ah, av) in enumerate(((2, 1), (2, 0), (1, 0))):  # XY, XZ, YZ: (horizontal, vertical) axes
            left, _, _, top = panels[3 * r + c][1].get_extent()
            # the first voxel's centre, half a voxel in from the panel's corner, is where the store puts it
            assert (left + v[ah] / 2, top + v[av] / 2) == pytest.approx((first[ah], first[av])), (r, c)
    # the detail's raw plane: acquired plane iz at origin + iz·2 µm
    big = np.zeros((6, 40, 40), np.float32)
    big[3, 18:22, 18:22] = 1.0
    figures.figure_detail(raw=big, interp=big, restored=big, voxel_size_in=(2.0, 0.5, 0.5),
                          voxel_size_out=(2.0, 0.5, 0.5), origin_voxels=(7.0, 0.0, 0.0))
    assert "acquired plane z=20 µm" in drawn[-1].axes[0].get_title()  # plane 3 of a stack whose plane 0 is at 14 µm
    # without a voxel size the axes are in output voxels: output voxel j reads j
    figures.figure_orthoviews(raw=raw, interp=interp, restored=restored)
    left, _, _, top = _images(drawn[-1])[6][1].get_extent()
    assert (left, top) == pytest.approx((-0.5, -0.5))


def test_the_detail_profiles_and_the_unitless_z_axis_read_the_stores_coordinates_too(monkeypatch):
    """A review of the change above: the orthoviews' and the raw title's positions were pinned, but the
    profile curves (lateral and axial), the axial detail's y in its titles, and the z axis of a volume
    without a voxel size could lose their shift without a test failing. Each curve's samples sit at the
    voxel centres the stores give (input: translation + i·v; output: the restored store's translation
    + j·v), here also at isotropic mode's non-integer factor (2.5)."""
    from selfres.pipeline import at_voxel_size, grid_origin

    drawn = captured_figures(monkeypatch)
    rng = np.random.default_rng(7)
    # lateral detail: ×2 in y and x
    raw = rng.random((3, 40, 40)).astype(np.float32)
    raw[1, 20, 20] += 5.0
    up = np.repeat(np.repeat(raw, 2, 1), 2, 2)
    vin, vout, o = (1.0, 0.5, 0.5), (1.0, 0.25, 0.25), (3.0, -2.0, 6.0)
    first_in, first_out = at_voxel_size(o, vin), grid_origin(vin, vout, at_voxel_size(o, vin))
    figures.figure_detail(raw=raw, interp=up, restored=up, voxel_size_in=vin, voxel_size_out=vout, origin_voxels=o)
    lines = {ln.get_label(): ln for ln in drawn[-1].axes[3].get_lines()}
    for name, first, v in (("raw", first_in[2], vin[2]), ("restored", first_out[2], vout[2])):
        idx = (np.asarray(lines[name].get_xdata()) - first) / v  # voxel indices along x
        np.testing.assert_allclose(idx, np.round(idx), atol=1e-9, err_msg=name)
    # the restored curve's values are the output row's at those indices
    res_idx = np.round((np.asarray(lines["restored"].get_xdata()) - first_out[2]) / vout[2]).astype(int)
    line_y = float(drawn[-1].axes[2].get_lines()[0].get_ydata()[0])
    jy = round((line_y - first_out[1]) / vout[1])
    np.testing.assert_array_equal(lines["restored"].get_ydata(), up[1, jy, res_idx])
    # axial detail at a non-integer factor: 10 planes of 2.5 µm → 25 of 1 µm
    raw = rng.random((10, 30, 120)).astype(np.float32)
    raw[5, 15, 60] += 5.0
    from selfres import degrade

    m = degrade.resize_matrix(10, 25, scale=2.5, antialias=False)
    deep = np.einsum("oz,zyx->oyx", np.asarray(m, np.float32), raw).astype(np.float32)
    vin, vout, o = (2.5, 0.3, 0.3), (1.0, 0.3, 0.3), (4.0, 1.0, -3.0)
    first_in, first_out = at_voxel_size(o, vin), grid_origin(vin, vout, at_voxel_size(o, vin))
    figures.figure_detail(raw=raw, interp=deep, restored=deep, voxel_size_in=vin, voxel_size_out=vout,
                          origin_voxels=o)
    fig = drawn[-1]
    lines = {ln.get_label(): ln for ln in fig.axes[3].get_lines()}
    for name, first, v in (("raw", first_in[0], vin[0]), ("restored", first_out[0], vout[0])):
        idx = (np.asarray(lines[name].get_xdata()) - first) / v  # plane indices along z
        np.testing.assert_allclose(idx, np.round(idx), atol=1e-9, err_msg=name)
    x_line = float(fig.axes[2].get_lines()[0].get_xdata()[0])
    jx = (x_line - first_out[2]) / vout[2]
    assert jx == pytest.approx(round(jx))
    y = float(re.search(r"y=(-?[0-9.]+)", fig.axes[3].get_title()).group(1))
    jy = (y - first_out[1]) / vout[1]
    assert jy == pytest.approx(round(jy), abs=0.01), fig.axes[3].get_title()
    # without a voxel size: output voxel j at j on every axis, z included (×2 in z here), and the
    # acquisition's panels on the same frame (its first plane's outer corner is the output's)
    raw, interp, restored = _grid_volumes()
    figures.figure_orthoviews(raw=raw, interp=interp, restored=restored)
    panels = _images(drawn[-1])
    for r in range(3):
        for c in range(3):
            left, _, _, top = panels[3 * r + c][1].get_extent()
            assert (left, top) == pytest.approx((-0.5, -0.5)), (r, c)


def test_a_report_drawn_from_its_volumes_reads_the_inputs_translation_too(monkeypatch):
    """A review: ``render_sample_report`` drawing its own figures (no ``figures`` given, as an API caller does)
    left out the input's translation that the workflow's report passes on."""
    from selfres import report

    seen = {}
    real = report.sample_figures

    def drawn_and_seen(**kw):
        seen.update(kw)
        return real(**kw)

    monkeypatch.setattr(report, "sample_figures", drawn_and_seen)
    raw, interp, restored = _grid_volumes()
    report.render_sample_report(sample="s", metrics={"mode": "enhance"}, raw=raw, interp=interp, restored=restored,
                                voxel_size_in=(2.0, 0.5, 0.25), voxel_size_out=(1.0, 0.5, 0.25),
                                origin_voxels=(5.0, 2.0, -4.0))
    assert seen["origin_voxels"] == (5.0, 2.0, -4.0)
