"""`python -m melanoma serve --config C [--port P] [--host H] [--max-mb M]`: a web page and a JSON endpoint
for one image, on a trained run.

  /           a Gradio page: upload a dermoscopy image (and optionally age, sex and site), see the fold
              ensemble's P(melanoma) (a CNN's with the run's TTA), each fold's, its percentile among the
              run's benign and malignant OOF images, the report's 90%/95%-sensitivity cutoffs it passes,
              and the family's explanation (Grad-CAM; or the lesion mask and the top features)
  /predict    POST multipart: image, optional age_approx, sex, anatom_site_general_challenge -> JSON

The run's saved config and its trained folds are loaded once, before the server starts (`predictor`);
a run with no trained fold stops here with exit status 2. Bad input gets a 4xx JSON error
({"error": "..."}) and the server carries on. Needs the `serve` extra: `pip install -e '.[serve]'`.
"""
# No `from __future__ import annotations` here: FastAPI reads the endpoint's annotations at run time.

import argparse
import importlib.util
import os
import socket
import sys

from melanoma.core.errors import ConfigError
from melanoma.runs import run_config
from melanoma.serve import predictor as predictor_lib
from melanoma.serve.predictor import Predictor, RequestError

SERVE_MODULES = {"gradio": "gradio", "fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart"}
FORM_SLACK = 256 * 1024  # the form's other fields and boundaries, on top of the image's size limit
SITE_FIELD = "anatom_site_general_challenge"
IMAGE_HEIGHT = 320  # pixels on the page; small images are scaled up to it


def missing_packages() -> list[str]:
    return [package for module, package in SERVE_MODULES.items() if importlib.util.find_spec(module) is None]


def _quiet_web_libraries() -> None:
    """No usage statistics or hub look-ups from Gradio and its helpers (and none can reach out offline)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------------------------------
# What the page shows
# --------------------------------------------------------------------------------------------------

def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def run_summary(predictor: Predictor) -> str:
    about = predictor.describe()
    folds = ",".join(map(str, about["folds"]))
    metadata = (f"age, sex and site reach the model (the patient's image count is unknown; sex and site codes "
                f"from {about['encodings']})"
                if about["metadata"] else "this run's model takes no metadata: age, sex and site are ignored")
    return (f"# Melanoma: one image\n"
            f"Run **{about['name']}** (`{about['path']}`, {about['family']}): {about['model']}. "
            f"Folds {folds} of {about['folds_configured']}. {metadata.capitalize()}. Reference: {about['oof']}.")


def details_markdown(result: predictor_lib.Prediction) -> str:
    """Each number of the answer, in words (README 'A web page for one image' says the same)."""
    lines = [f"**P(melanoma) {result.probability:.4f}**: the mean over {len(result.folds)} fold model(s) of "
             "each one's probability (a CNN's: its mean over the run's TTA views).", "",
             "| fold | P(melanoma) |", "|---:|---:|"]
    lines += [f"| {fold} | {value:.4f} |" for fold, value in zip(result.folds, result.fold_probabilities)]
    percentiles = result.position["percentiles"]
    if percentiles:
        lines += ["", f"Against the run's out-of-fold predictions: higher than "
                      f"**{_percent(percentiles['benign'])}** of its {percentiles['benign_images']} benign images "
                      f"and **{_percent(percentiles['malignant'])}** of its {percentiles['malignant_images']} "
                      "malignant images."]
    else:
        lines += ["", "The run has no out-of-fold predictions to compare with."]
    if result.position["cutoffs"]:
        lines += ["", "| report's cutoff | P(melanoma) at or above | its OOF sensitivity | its OOF specificity "
                      "| this image |", "|---|---:|---:|---:|---|"]
        for row in result.position["cutoffs"]:
            verdict = "**passes: positive**" if row["passed"] else "below: negative"
            lines.append(f"| {row['rule']} | {row['cutoff']:.4f} | {row['sensitivity']:.3f} | "
                         f"{row['specificity']:.3f} | {verdict} |")
    for note in result.answer.notes:
        lines += ["", note]
    if not result.metadata_used:
        lines += ["", "Age, sex and site were ignored: the run's model takes no metadata."]
    return "\n".join(lines)


def _for_display(image):
    """Small images scaled up to the page's image height (the JSON's heatmap keeps the image's size)."""
    # OpenCV loads only when images are handled here
    import cv2

    height, width = image.shape[:2]
    factor = IMAGE_HEIGHT / max(height, width)
    if factor <= 1:
        return image
    return cv2.resize(image, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_LINEAR)


def build_page(predictor: Predictor):
    """The Gradio Blocks of the page (not launched: `build_app` mounts it)."""
    _quiet_web_libraries()
    # the serve extra: loaded only by `serve`
    import gradio as gr

    encodings = predictor.encodings
    unknown = "unknown"

    def answer(path, age, sex, site):
        if not path:
            raise gr.Error("Upload a JPEG or PNG image first.")
        with open(path, "rb") as handle:
            data = handle.read(predictor.max_bytes + 1)
        try:
            result = predictor.predict(data, age, None if sex == unknown else sex,
                                       None if site == unknown else site)
        except RequestError as error:
            raise gr.Error(str(error)) from None
        classes = result.classes if result.classes is not None else {}
        return (f"{result.probability:.4f}", details_markdown(result), _for_display(result.image_rgb),
                _for_display(result.answer.picture),
                gr.update(value=classes, visible=result.classes is not None))

    with gr.Blocks(title=f"melanoma: {predictor.config.name}") as page:
        gr.Markdown(run_summary(predictor))
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Dermoscopy image (JPEG or PNG, any size)",
                                 file_types=[".jpg", ".jpeg", ".png"], type="filepath", elem_id="upload")
                note = "" if predictor.served.metadata_used else " (ignored by this run)"
                age = gr.Textbox(label=f"Age in years{note}", placeholder="unknown", elem_id="age")
                sex = gr.Dropdown([unknown] + sorted(encodings["sex"]), value=unknown, label=f"Sex{note}",
                                  elem_id="sex")
                site = gr.Dropdown([unknown] + sorted(encodings[SITE_FIELD]), value=unknown,
                                   label=f"Anatomic site{note}", elem_id="site")
                button = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column(scale=2):
                probability = gr.Textbox(label="P(melanoma): fold ensemble with the run's TTA",
                                         interactive=False, elem_id="probability")
                details = gr.Markdown(elem_id="details")
                with gr.Row():
                    image = gr.Image(label="Image", type="numpy", format="png", interactive=False,
                                     height=IMAGE_HEIGHT, elem_id="image")
                    heat = gr.Image(label=predictor.served.title,
                                    type="numpy", format="png", interactive=False, height=IMAGE_HEIGHT,
                                    elem_id="explanation")
                classes = gr.Label(label="Diagnosis classes (mean over folds and views)", num_top_classes=9,
                                   visible=predictor.diagnosis, elem_id="classes")
        outputs = [probability, details, image, heat, classes]
        inputs = [upload, age, sex, site]
        upload.upload(answer, inputs, outputs)
        button.click(answer, inputs, outputs)
    return page


# --------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------

def build_app(predictor: Predictor):
    """FastAPI app with POST /predict, and the Gradio page mounted at /."""
    _quiet_web_libraries()
    # the serve extra: loaded only by `serve`
    import gradio as gr

    # the serve extra: loaded only by `serve`
    from fastapi import FastAPI, File, Form, Request, UploadFile

    # the serve extra: loaded only by `serve`
    from fastapi.exceptions import RequestValidationError

    # the serve extra: loaded only by `serve`
    from fastapi.responses import JSONResponse

    app = FastAPI(title="melanoma serve", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        """An upload far over the limit is refused from its Content-Length, before it is read."""
        length = request.headers.get("content-length", "")
        if request.url.path == "/predict" and length.isdigit() and int(length) > predictor.max_bytes + FORM_SLACK:
            limit = predictor_lib.megabytes(predictor.max_bytes)
            return JSONResponse({"error": f"the request is {predictor_lib.megabytes(int(length))}, over the "
                                          f"image limit of {limit} (serve --max-mb): upload a smaller image"},
                                status_code=413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def form_error(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, item.get('loc', ())))}: {item.get('msg')}"
                             for item in error.errors())
        return JSONResponse({"error": f"the form is not what /predict takes ({problems}): send multipart "
                                      f"with a file field 'image' and optional age_approx, sex, {SITE_FIELD}"},
                            status_code=422)

    @app.post("/predict")
    def predict(image: UploadFile | None = File(None), age_approx: str | None = Form(None),
                sex: str | None = Form(None), anatom_site_general_challenge: str | None = Form(None)):
        if image is None:
            return JSONResponse({"error": "no file field 'image' in the form: send the image as multipart "
                                          "form data, e.g. curl -F image=@lesion.jpg .../predict"},
                                status_code=400)
        data = image.file.read(predictor.max_bytes + 1)  # one byte past the limit is enough to refuse it
        try:
            result = predictor.predict(data, age_approx, sex, anatom_site_general_challenge)
        except RequestError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        return result.to_json()

    theme = gr.themes.Default()
    return gr.mount_gradio_app(app, build_page(predictor), path="/", theme=theme,
                               max_file_size=predictor.max_bytes, ssr_mode=False, footer_links=[])


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def _megabytes_argument(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of megabytes, got {text}")
    return value


def _port_argument(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {text}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {text}: choose another --port")
    return port


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="experiment config whose run to serve (or the run folder outputs/<name>)")
    parser.add_argument("--port", type=_port_argument, default=7860, help="port, 1-65535 (default 7860)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--max-mb", type=_megabytes_argument, default=predictor_lib.DEFAULT_MAX_BYTES / 2**20,
                        help="largest image accepted, in MB (default 20)")


def check_port(host: str, port: int) -> None:
    """Refuse a port that cannot be listened on now, before a minute is spent loading the folds."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror or error}): choose another "
                          "--port (make serve PORT=...) or --host") from None


def command(args: argparse.Namespace) -> int:
    # a blend has no model: installing the serve extra would not help, so this is said first
    predictor_lib.refuse_blend(run_config.run_folder_of(args.config))
    missing = missing_packages()
    if missing:
        print(f"error: serve needs {', '.join(missing)}: install the serve extra with "
              "`pip install -e '.[serve]'` (or run `make serve`)", file=sys.stderr)
        return 2
    check_port(args.host, args.port)
    predictor = Predictor.from_target(args.config, max_bytes=int(args.max_mb * 2**20))
    predictor.warm_up()
    app = build_app(predictor)
    # the serve extra: loaded only by `serve`
    import uvicorn

    about = predictor.describe()
    folds = ",".join(map(str, about["folds"]))
    print(f"serving run {about['name']} ({about['family']}, folds {folds}) on http://{args.host}:{args.port}/  "
          "(POST /predict for JSON; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
