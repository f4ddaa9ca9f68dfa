"""`serve`: the JSON endpoint and the page on a tiny trained run, against `infer`'s predictions.

One run (2 folds, 32 px, 1 epoch of 2 steps, 2 dihedral TTA views) is trained and served once for the
module: a real uvicorn server on a free local port, as `python -m melanoma serve` runs it.
"""
import ast
import base64
import importlib.util
import io
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, write_config

from melanoma.data import taxonomy

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("gradio", "fastapi", "uvicorn", "httpx")),
    reason="the serve extra is not installed: pip install -e '.[serve]' (make test installs it)")

MAX_BYTES = 200 * 1024  # the size limit the test server runs with (serve --max-mb), small to test it
WEB_MODULES = ("gradio", "fastapi", "uvicorn", "starlette", "multipart", "playwright", "httpx")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _test_images(records_dir: Path) -> dict[str, bytes]:
    """image_name -> the JPEG bytes a test record holds."""
    import tensorflow as tf

    spec = {"image": tf.io.FixedLenFeature([], tf.string), "image_name": tf.io.FixedLenFeature([], tf.string)}
    images = {}
    for serialized in tf.data.TFRecordDataset(sorted(str(p) for p in records_dir.glob("test*.tfrec"))):
        example = tf.io.parse_single_example(serialized, spec)
        images[example["image_name"].numpy().decode()] = example["image"].numpy()
    return images


@pytest.fixture(scope="module")
def served(tiny_data, tmp_path_factory):
    """A trained tiny run, its submission from `infer`, and a live server on it.

    The run's model is the tests' tiny batch-norm network (a convolution, then the `pool` layer and the
    output layer, as in model.build_model): train, infer and serve all build it through
    model.build_model, and tracing EfficientNet's steps would take most of this file's time."""
    import reliability_helpers as helpers
    import uvicorn

    from melanoma import cli
    from melanoma.model import network as model_lib
    from melanoma.serve import app as serve
    from melanoma.serve.predictor import Predictor

    folder = tmp_path_factory.mktemp("serve")
    config = write_config(folder, tiny_data,
                          body="tta:\n  steps: 2\n  mode: dihedral\n  prediction_batch_size: 16\n")
    with pytest.MonkeyPatch.context() as patch:  # while the run is trained, predicted and loaded
        patch.setattr(model_lib, "build_model", helpers.build_tiny_normalised_model)
        assert cli.main(["train", "--config", str(config), "--fold", "all"]) == 0
        assert cli.main(["infer", "--config", str(config)]) == 0
        predictor = Predictor.from_target(str(config), max_bytes=MAX_BYTES)
    run = folder / "outputs" / "tiny"
    infer = pd.read_csv(folder / "submissions" / "tiny.csv").set_index("image_name")["target"]
    fold_preds = {k: pd.read_csv(run / f"fold{k}" / "test.csv").set_index("image_name")["pred"] for k in (0, 1)}

    predictor.warm_up()
    app = serve.build_app(predictor)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    yield {"url": f"http://127.0.0.1:{port}", "config": config, "run": run, "infer": infer,
           "fold_preds": fold_preds, "records": _test_images(tiny_data["records"]),
           "originals": Path(tiny_data["test_images"]), "predictor": predictor}
    server.should_exit = True
    thread.join(timeout=30)


def _post(url: str, data: bytes | None = None, name: str = "lesion.jpg", **form):
    import httpx

    files = {"image": (name, data, "application/octet-stream")} if data is not None else None
    return httpx.post(f"{url}/predict", files=files, data=form or None, timeout=120)


def _png(height: int, width: int, seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _heatmap_size(answer: dict) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"]))) as image:
        assert image.format == "PNG"
        return image.height, image.width


def test_predict_equals_infer_for_record_and_original_images(served):
    names = sorted(served["records"])[:3]
    for name in names:
        # The record's own JPEG (already the run's 32 px) and the original 48 px JPEG the record was built
        # from (resized and re-encoded the way `records` did) must both give infer's answer.
        original = (served["originals"] / f"{name}.jpg").read_bytes()
        for data, size, as_record in [(served["records"][name], (32, 32), True), (original, (48, 48), False)]:
            response = _post(served["url"], data)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert abs(answer["probability"] - served["infer"][name]) < 1e-5
            assert answer["folds"] == [0, 1]
            np.testing.assert_allclose(answer["fold_probabilities"],
                                       [served["fold_preds"][k][name] for k in (0, 1)], atol=1e-5)
            assert answer["tta"] == {"steps": 2, "mode": "dihedral", "views": 2}
            assert answer["image_used_as_record"] is as_record
            assert _heatmap_size(answer) == size
            assert "classes" not in answer  # binary head


def test_percentiles_and_cutoffs_match_the_runs_oof(served):
    from melanoma.evaluate import report

    oof = pd.read_csv(served["run"] / "oof.csv")
    name = sorted(served["records"])[0]
    answer = _post(served["url"], served["records"][name]).json()
    probability = answer["probability"]
    for label, value in (("benign", 0), ("malignant", 1)):
        preds = oof.loc[oof["target"] == value, "pred"].to_numpy()
        expected = 100 * ((preds < probability).sum() + 0.5 * (preds == probability).sum()) / len(preds)
        assert answer["percentiles"][label] == pytest.approx(expected)
        assert answer["percentiles"][f"{label}_images"] == len(preds)
    table = report.cutoff_table(oof["target"], oof["pred"])
    rows = table[table["rule"].str.startswith("sensitivity")]
    assert [row["cutoff"] for row in answer["cutoffs"]] == pytest.approx(rows["cutoff"].tolist())
    assert answer["cutoffs_passed"] == [rule for rule, cutoff in zip(rows["rule"], rows["cutoff"])
                                        if probability >= cutoff]


def test_any_size_png_gets_a_heatmap_of_its_size(served):
    answer = _post(served["url"], _png(40, 56), name="wide.png", age_approx="45", sex="female",
                   anatom_site_general_challenge="torso")
    assert answer.status_code == 200, answer.text
    assert _heatmap_size(answer.json()) == (40, 56)
    assert 0 <= answer.json()["probability"] <= 1
    assert answer.json()["metadata_used"] is False


def test_bad_input_gets_a_4xx_json_error_and_the_server_carries_on(served):
    url = served["url"]
    original = (served["originals"] / f"{sorted(served['records'])[0]}.jpg").read_bytes()
    png = _png(48, 48)
    bad = {
        "not an image": (_post(url, b"name,target\nISIC_1,0\n", name="labels.csv"), 415, "not an image"),
        "gif": (_post(url, _gif(), name="x.gif"), 415, "GIF"),
        "empty": (_post(url, b""), 400, "empty"),
        "truncated jpeg": (_post(url, original[: len(original) // 2]), 400, "truncated"),
        "truncated png": (_post(url, png[: len(png) // 2], name="x.png"), 400, "truncated"),
        # refused once read (just over the limit), and from the Content-Length header (far over it)
        "over the limit, read": (_post(url, _png(300, 300), name="big.png"), 413, "over the limit"),
        "over the limit, header": (_post(url, _png(450, 450), name="huge.png"), 413, "over the"),
        "unknown site": (_post(url, original, anatom_site_general_challenge="elbow"), 422, "torso"),
        "unknown sex": (_post(url, original, sex="x"), 422, "female, male"),
        "bad age": (_post(url, original, age_approx="old"), 422, "age_approx"),
        "no image": (_post(url, None, sex="male"), 400, "image"),
    }
    assert MAX_BYTES < len(_png(300, 300)) < MAX_BYTES + 256 * 1024 < len(_png(450, 450))
    for what, (response, status, words) in bad.items():
        assert response.status_code == status, (what, response.text)
        assert words in response.json()["error"], (what, response.json())
    assert _post(url, original).status_code == 200


def _gif() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


def test_eight_concurrent_requests_each_get_their_own_answer(served, monkeypatch):
    import keras

    def no_reads(*args, **kwargs):
        raise AssertionError("a request read a checkpoint")

    monkeypatch.setattr(keras.Model, "load_weights", no_reads)
    monkeypatch.setattr(keras.models, "load_model", no_reads)
    names = sorted(served["records"])[:8]
    assert len(names) == 8
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda n: _post(served["url"], served["records"][n]), names))
    for name, response in zip(names, responses):
        assert response.status_code == 200, response.text
        assert abs(response.json()["probability"] - served["infer"][name]) < 1e-5, name


def test_diagnosis_head_with_metadata_gives_classes_and_uses_the_form(served):
    """Random weights are enough to see the plumbing: two folds averaged, classes that sum to 1 with MEL
    as the probability, and sex / site / age reaching the metadata branch."""
    from melanoma.core.config import Config
    from melanoma.model import network as model_lib
    from melanoma.serve.predictor import LoadedRun, Predictor
    from melanoma.train.families import cnn

    base = served["predictor"].config
    config = Config({**base, "model": Config({**base.model, "head": "diagnosis", "metadata_input": True})})
    models = {fold: model_lib.build_model(config, pretrained=False) for fold in (0, 1)}
    predictor = Predictor(LoadedRun(path=str(served["run"]), config=config, folds=[0, 1],
                                    served=cnn.Serving(config, models)))
    image = served["records"][sorted(served["records"])[0]]
    answer = predictor.predict(image, age_approx=70, sex="male", site="head/neck").to_json()
    assert answer["folds"] == [0, 1] and answer["fold_probabilities"][0] != answer["fold_probabilities"][1]
    assert answer["probability"] == pytest.approx(np.mean(answer["fold_probabilities"]))
    assert set(answer["classes"]) == set(taxonomy.DIAGNOSIS_CLASSES)
    assert sum(answer["classes"].values()) == pytest.approx(1, abs=1e-5)
    assert answer["classes"]["MEL"] == pytest.approx(answer["probability"], abs=1e-6)
    assert answer["metadata_used"] is True
    other = predictor.predict(image, age_approx=20, sex="female", site="lower extremity").to_json()
    assert other["probability"] != answer["probability"]
    unknown = predictor.predict(image).to_json()
    assert unknown["probability"] not in (answer["probability"], other["probability"])


def test_gradcam_is_each_positions_share_of_the_logit_and_ignores_the_other_views(served):
    """With pooling then one linear layer, Grad-CAM's signed map at a position is that position's share of
    the melanoma logit: the map sums, with the layer's bias, to log(p / (1 - p)). The batched explainer
    takes the first image's gradient only: alone or beside other views, the same map."""
    import tensorflow as tf

    from melanoma.core.config import Config
    from melanoma.model import gradcam
    from melanoma.model import network as model_lib

    base = served["predictor"].config
    config = Config({**base, "data": Config({**base.data, "image_size": 64})})
    model = model_lib.build_model(config, pretrained=False)
    explain = gradcam.explainer(model)
    images = tf.constant(np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)), tf.float32)
    output, alone = (value.numpy() for value in explain({"image": images[:1]}))
    assert alone.shape == (2, 2)  # EfficientNet's last block: the input size / 32
    probability = float(output[0, 0])
    bias = float(model.get_layer("target").bias.numpy()[0])
    assert alone.sum() + bias == pytest.approx(np.log(probability / (1 - probability)), abs=1e-4)
    np.testing.assert_allclose(alone, explain({"image": images})[1].numpy(), rtol=1e-4, atol=1e-6)
    scaled = gradcam.normalise(alone)
    assert scaled.min() == 0 and scaled.max() == 1 and np.argmax(scaled) == np.argmax(alone)


def test_a_run_without_a_trained_fold_stops_serve_with_exit_2(tiny_data, tmp_path, capsys):
    from melanoma import cli
    from melanoma.core.config import load_config
    from melanoma.runs.run_config import save_config

    config_path = write_config(tmp_path, tiny_data, name="untrained")
    assert cli.main(["serve", "--config", str(config_path)]) == 2
    assert "train.py" in capsys.readouterr().err  # no run folder at all
    run = tmp_path / "outputs" / "untrained"
    save_config(load_config(config_path))
    (run / "fold0").mkdir()
    assert cli.main(["serve", "--config", str(config_path)]) == 2
    err = capsys.readouterr().err
    assert "no trained fold" in err and "train.py" in err


def test_a_port_in_use_stops_serve_with_exit_2_before_loading(served, capsys):
    from melanoma import cli

    taken = int(served["url"].rsplit(":", 1)[1])  # the test server listens there
    assert cli.main(["serve", "--config", str(served["config"]), "--port", str(taken)]) == 2
    assert "choose another --port" in capsys.readouterr().err


def test_only_the_serve_command_imports_web_libraries():
    """serve/app.py alone imports the serve extra (Gradio, FastAPI, ...): every other module of the package,
    the predictor and the families' served models included, loads without it."""
    package = REPO / "src" / "melanoma"
    modules = sorted(path for path in package.rglob("*.py") if path != package / "serve" / "app.py")
    checked = {str(path.relative_to(package)) for path in modules}
    assert {"serve/predictor.py", "train/families/cnn.py", "train/families/tabular.py", "cli.py"} <= checked
    offenders = []
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(package)} imports {name}" for name in names
                          if name.split(".")[0] in WEB_MODULES]
    assert not offenders, offenders
    app = ast.parse((package / "serve" / "app.py").read_text())  # and the check sees an import where one is
    assert any(isinstance(node, ast.Import) and node.names[0].name == "gradio" for node in ast.walk(app))


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None,
                    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
def test_page_in_headless_chromium_shows_the_probability(served):
    """Upload through the page's own file control; the page shows infer's probability (4 decimals)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    name = sorted(served["records"])[0]
    image = served["originals"] / f"{name}.jpg"
    screenshot = REPO / "outputs" / "serve_browser_failure.png"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            page.goto(served["url"] + "/", timeout=60_000)
            page.locator("#upload input[type=file]").set_input_files(str(image))
            field = "#probability textarea, #probability input"
            page.wait_for_function(f"() => document.querySelector('{field}')?.value", timeout=60_000)
            shown = page.locator(field).first.input_value()
            assert float(shown) == pytest.approx(served["infer"][name], abs=5.1e-5), shown
            assert "fold" in page.locator("#details").inner_text()
            page.locator("#explanation img").first.wait_for(timeout=30_000)
        except Exception:
            screenshot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            raise
        finally:
            browser.close()


def test_form_codes_fall_back_to_the_competitions_where_the_records_have_no_encodings(tmp_path):
    """The public melanoma-NxN records come without encodings.json: the page then codes sex and site as
    the competition's own records do (female 0, male 1; torso 4)."""
    from melanoma.core.config import load_config
    from melanoma.serve import predictor

    folder = tmp_path / "records"
    folder.mkdir()
    (folder / "train00-2.tfrec").write_bytes(b"")
    config = load_config(REPO / "configs" / "base.yaml", [f"data.train_files={folder}/train*.tfrec"])
    codes, source = predictor.metadata_encodings(config)
    assert codes == {"sex": {"female": 0, "male": 1},
                     "anatom_site_general_challenge": {"head/neck": 0, "lower extremity": 1, "oral/genital": 2,
                                                       "palms/soles": 3, "torso": 4, "upper extremity": 5}}
    assert source == "the competition's codes (no encodings.json beside the train files)"


# --------------------------------------------------------------------------------------------------
# a tree run: the same page and endpoint, with the lesion mask and the features that moved the answer
# --------------------------------------------------------------------------------------------------

TABULAR = """\
model:
  family: tabular
features:
  histogram_bins: 4
  workers: 1
  metadata: false        # an upload has no patient: with these off, its features are a test record's
  patient_context: false
trees:
  max_iter: 15
  min_samples_leaf: 5
  importance_repeats: 0
"""


def _serve(predictor):
    import uvicorn

    from melanoma.serve import app as serve

    predictor.warm_up()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(serve.build_app(predictor), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def served_trees(tiny_data, tmp_path_factory):
    """A trained tiny tree run (2 folds), its submission from `infer`, and a live server on it."""
    from melanoma import cli
    from melanoma.serve.predictor import Predictor

    folder = tmp_path_factory.mktemp("serve-trees")
    config = write_config(folder, tiny_data, body=TABULAR, name="trees")
    assert cli.main(["train", "--config", str(config), "--fold", "all"]) == 0
    assert cli.main(["infer", "--config", str(config)]) == 0
    predictor = Predictor.from_target(str(config), max_bytes=MAX_BYTES)
    run = folder / "outputs" / "trees"
    infer = pd.read_csv(folder / "submissions" / "trees.csv").set_index("image_name")["target"]
    fold_preds = {k: pd.read_csv(run / f"fold{k}" / "test.csv").set_index("image_name")["pred"] for k in (0, 1)}
    server, thread, url = _serve(predictor)
    yield {"url": url, "run": run, "infer": infer, "fold_preds": fold_preds, "predictor": predictor,
           "records": _test_images(tiny_data["records"]), "originals": Path(tiny_data["test_images"])}
    server.should_exit = True
    thread.join(timeout=30)


def test_a_tree_run_answers_infers_probability_with_its_mask_and_top_features(served_trees):
    from PIL import Image

    columns = served_trees["predictor"].served.saved[0]["columns"]
    for name in sorted(served_trees["records"])[:3]:
        response = _post(served_trees["url"], served_trees["records"][name])
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["probability"] == pytest.approx(served_trees["infer"][name], abs=1e-9)
        np.testing.assert_allclose(answer["fold_probabilities"],
                                   [served_trees["fold_preds"][k][name] for k in (0, 1)], atol=1e-9)
        assert answer["folds"] == [0, 1] and "heatmap_png" not in answer and "classes" not in answer
        with Image.open(io.BytesIO(base64.b64decode(answer["mask_png"]))) as mask:
            assert mask.format == "PNG" and (mask.height, mask.width) == (32, 32)
        contributions = answer["contributions"]
        assert len(contributions) == 10 and {row["feature"] for row in contributions} <= set(columns)
        sizes = [abs(row["log_odds"]) for row in contributions]
        assert sizes == sorted(sizes, reverse=True) and all(np.isfinite(sizes))
        assert isinstance(answer["lesion_found"], bool) and answer["metadata_used"] is False
        assert answer["percentiles"]["benign_images"] + answer["percentiles"]["malignant_images"] > 0


def test_a_tree_contribution_is_the_change_when_the_feature_goes_back_to_its_median(served_trees):
    """The effect of a feature: the log-odds as the image is, minus with that feature at the fold's
    training median, averaged over the folds."""
    from melanoma.train.families import trees

    served = served_trees["predictor"].served
    name = sorted(served_trees["records"])[0]
    answer = _post(served_trees["url"], served_trees["records"][name]).json()
    top = answer["contributions"][0]
    table, _ = served._features(served_trees["records"][name], {
        "patient_id": -1, "sex": -1, "age_approx": -1, "anatom_site_general_challenge": -1})
    effects = []
    for saved in served.saved.values():
        values = table[saved["columns"]].to_numpy(dtype=float)[0]
        index = saved["columns"].index(top["feature"])
        changed = values.copy()
        changed[index] = saved["reference"][index]
        odds = [np.log(p / (1 - p)) for p in trees.predict(saved["model"], np.vstack([values, changed]))]
        effects.append(odds[0] - odds[1])
    assert top["log_odds"] == pytest.approx(np.mean(effects), abs=1e-9)
    assert top["value"] == pytest.approx(float(table[top["feature"]].iloc[0]))


@pytest.mark.skipif(_chromium() is None,
                    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
def test_the_tree_runs_page_in_headless_chromium_shows_probability_mask_and_features(served_trees):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    name = sorted(served_trees["records"])[0]
    image = served_trees["originals"] / f"{name}.jpg"
    screenshot = REPO / "outputs" / "serve_trees_browser_failure.png"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            page.goto(served_trees["url"] + "/", timeout=60_000)
            page.locator("#upload input[type=file]").set_input_files(str(image))
            assert "tabular" in page.locator("body").inner_text()  # the run's family, in the page's header
            field = "#probability textarea, #probability input"
            page.wait_for_function(f"() => document.querySelector('{field}')?.value", timeout=60_000)
            shown = page.locator(field).first.input_value()
            # the original 48 px JPEG becomes the 32 px record JPEG infer read: the same features
            assert float(shown) == pytest.approx(served_trees["infer"][name], abs=5.1e-5), shown
            details = page.locator("#details").inner_text()
            assert "features that moved its probability most" in details and "fold" in details
            page.locator("#explanation img").first.wait_for(timeout=30_000)
            assert "Lesion mask" in page.locator("#explanation").inner_text()
        except Exception:
            screenshot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            raise
        finally:
            browser.close()


def test_a_stacked_tree_run_serves_the_run_it_stacks_beside_it(served_trees, tiny_data):
    """features.from_runs: the stacked run's probability of the upload is this run's feature, as its test
    prediction (mean over its folds) is in infer: the answer equals infer's."""
    from melanoma import cli
    from melanoma.serve.predictor import Predictor

    folder = served_trees["run"].parent.parent
    body = TABULAR.replace("  workers: 1\n", "  workers: 1\n  from_runs: [trees]\n")
    config = write_config(folder, tiny_data, body=body, name="stacked")
    assert cli.main(["train", "--config", str(config), "--fold", "all"]) == 0
    assert cli.main(["infer", "--config", str(config)]) == 0
    infer = pd.read_csv(folder / "submissions" / "stacked.csv").set_index("image_name")["target"]
    predictor = Predictor.from_target(str(config), max_bytes=MAX_BYTES)
    assert "run_trees" in predictor.served.saved[0]["columns"] and list(predictor.served.members) == ["trees"]
    name = sorted(served_trees["records"])[1]
    answer = predictor.predict(served_trees["records"][name]).to_json()
    assert answer["probability"] == pytest.approx(infer[name], abs=1e-9)
