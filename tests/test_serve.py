"""``smoothseg_serve`` end to end: a real server process (uvicorn + its worker process) on a free loopback port, a
real HTTP client, tiny untrained models, phantom CTs. What a served job writes must equal ``smoothseg_predict``'s
output; bad uploads are refused or fail with their reason while the service goes on; jobs outlive a dead worker and
a restarted server; nothing outside a job's whitelisted files is served; binding beyond loopback needs a token."""

from __future__ import annotations

import concurrent.futures
import gzip
import io
import json
import os
import re
import signal
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("fastapi", reason="smoothseg_serve needs its extra (pip install -e .[serve])")
httpx = pytest.importorskip("httpx")

from cli_helpers import run_cli  # noqa: E402
from inference_helpers import TINY_DATASET  # noqa: E402
from serve_helpers import (  # noqa: E402
    clinical_prediction,
    phantom_file,
    rss_mb,
    start_server,
    submit,
    tiny_results,
    wait_for,
)

from smoothseg.dataset.io import Geometry, read_image  # noqa: E402
from smoothseg.dataset.orientation import Orientation  # noqa: E402
from smoothseg.inference.report import lesion_table  # noqa: E402
from smoothseg.serve.app import remove_expired  # noqa: E402
from smoothseg.serve.findings import findings_text  # noqa: E402
from smoothseg.serve.jobs import MAX_ATTEMPTS, JobStore, new_job_id  # noqa: E402
from smoothseg.serve.uploads import UploadError, check_zip  # noqa: E402
from smoothseg.serve.viewer import slice_bytes, write_view  # noqa: E402
from smoothseg.serve.worker import ServeSettings  # noqa: E402

MAX_UPLOAD_GB = "0.01"  # 10.7 MB: the phantoms fit, the over-size test does not


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("serve")
    results = tiny_results(root / "results")
    inputs = root / "inputs"
    inputs.mkdir()
    return {"root": root, "results": results, "home": root / "home",
            "ct": phantom_file(inputs / "ct.nii.gz", seed=3), "ct2": phantom_file(inputs / "other.nii.gz", seed=4),
            # a whole small phantom: a job of a few seconds, long enough to be caught running
            "slow": phantom_file(inputs / "slow.nii.gz", seed=5, shape=(46, 128, 128))}


@pytest.fixture(scope="module")
def server(setup: dict):
    running = start_server(setup["results"], setup["root"] / "data", setup["home"], "--max-upload-gb", MAX_UPLOAD_GB)
    yield running
    running.stop()


# -- the service, end to end ------------------------------------------------------------------------------------------
def test_a_served_job_equals_smoothseg_predict(server, setup: dict, tmp_path: Path) -> None:
    with server.client() as client:
        answer = submit(client, setup["ct"], "patient scan.nii.gz")
        assert answer.status_code == 201 and answer.json()["state"] == "queued"
        job = wait_for(client, answer.json()["id"])
        assert job["state"] == "done", job
        assert job["files"] == ["labels.nii.gz", "labels.seg.nrrd", "report.json", "findings.txt"]
        downloads = {}
        for name in job["files"]:
            response = client.get(f"/api/jobs/{job['id']}/files/{name}")
            assert response.status_code == 200
            (tmp_path / name).write_bytes(response.content)
            downloads[name] = tmp_path / name
        meta = client.get(f"/api/jobs/{job['id']}/view").json()
        axial = client.get(f"/api/jobs/{job['id']}/view/axial/{meta['planes']['axial']['slices'] // 2}").content

    # the command line on the same file with the same models
    done = run_cli("predict", "-i", str(setup["ct"]), "-o", str(tmp_path / "cli"), "-d", TINY_DATASET, "-device",
                   "cpu", home=setup["home"], extra_env={"SMOOTHSEG_RESULTS": str(setup["results"]),
                                                         "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    expected, expected_geometry = read_image(tmp_path / "cli" / "ct.nii.gz", check_finite=False)
    served, served_geometry = read_image(downloads["labels.nii.gz"], check_finite=False)
    _, image_geometry = read_image(setup["ct"])
    assert served_geometry.differences(image_geometry) == [] and expected_geometry.differences(image_geometry) == []
    assert set(np.unique(served)) <= {0, 1, 2}
    assert np.mean(served != expected) <= 1e-4  # equal up to floating-point ties
    slicer, slicer_geometry = read_image(downloads["labels.seg.nrrd"], check_finite=False)
    assert np.array_equal(slicer, served) and slicer_geometry.differences(image_geometry) == []

    report = json.loads(downloads["report.json"].read_text())
    cli_report = json.loads((tmp_path / "cli" / "ct_report.json").read_text())
    assert report["input"] == "patient scan.nii.gz" and report["lesion_count"] == cli_report["lesion_count"]
    assert report["liver_volume_ml"] == pytest.approx(cli_report["liver_volume_ml"], rel=1e-3)
    assert "/jobs/" not in json.dumps(report["input"]) and report["output"] == "labels.nii.gz"
    _every_number_of_the_text_is_in_the_report(downloads["findings.txt"].read_text(), report)

    # the viewer's middle axial slice is the CT's, in display orientation, followed by its labels
    image, geometry = read_image(setup["ct"])
    canonical = Orientation.from_direction(geometry.direction).to_canonical(image)
    k = meta["planes"]["axial"]["slices"] // 2
    n = canonical.shape[1] * canonical.shape[2]
    assert np.array_equal(np.frombuffer(axial[:2 * n], "<i2").reshape(canonical.shape[1:]), canonical[k])
    labels_canonical = Orientation.from_direction(geometry.direction).to_canonical(served)
    assert np.array_equal(np.frombuffer(axial[2 * n:], np.uint8).reshape(canonical.shape[1:]), labels_canonical[k])


def test_clinical_values_give_the_clinical_tlvr_and_bad_ones_are_refused(server, setup: dict) -> None:
    with server.client() as client:
        features = client.get("/api/model").json()["clinical_features"]
        assert features == [{"name": "AFP", "kind": "numeric"}, {"name": "Age", "kind": "numeric"},
                            {"name": "Sex", "kind": "categorical"}]
        answer = submit(client, setup["ct"], Age="sixty")
        assert answer.status_code == 400 and "'Age' must be a number" in answer.json()["detail"]
        job = wait_for(client, submit(client, setup["ct"], AFP="250", Age="64", Sex="F").json()["id"])
        report = client.get(f"/api/jobs/{job['id']}/files/report.json").json()
        findings = client.get(f"/api/jobs/{job['id']}/files/findings.txt").text
        plain = wait_for(client, submit(client, setup["ct"], AFP="", Age="").json()["id"])  # blank: no values
        plain_report = client.get(f"/api/jobs/{plain['id']}/files/report.json").json()
    expected = clinical_prediction(setup["results"], {"AFP": 250.0, "Age": 64.0, "Sex": "F"})
    assert report["clinical_tlvr_prediction"] == pytest.approx(expected, abs=1e-9)
    assert f"predicted from the clinical values {expected:.4f}" in findings
    assert plain_report["clinical_tlvr_prediction"] is None


def _numbers(text: str) -> list[str]:
    return re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w])", text)


def _every_number_of_the_text_is_in_the_report(text: str, report: dict) -> None:
    """Each number printed in the findings is a number of the report, rounded as printed."""
    values: list[float] = []

    def collect(node) -> None:
        if isinstance(node, bool) or node is None:
            return
        if isinstance(node, (int, float)):
            values.append(abs(float(node)))
        elif isinstance(node, dict):
            for value in node.values():
                collect(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                collect(value)

    collect(report)
    numbers = _numbers(text)
    assert numbers, text
    for number in numbers:
        digits = len(number.split(".")[1]) if "." in number else 0
        assert any(f"{v:.{digits}f}" == number for v in values), f"{number} in the findings is not in the report"


def test_findings_numbers_come_from_the_report_and_a_made_up_one_is_caught() -> None:
    report = {"liver_found": True, "liver_volume_ml": 1534.27, "tumour_volume_ml": 12.345, "tlvr": 0.008046,
              "clinical_tlvr_prediction": 0.0123, "lesion_count": 1,
              "lesions": [{"lesion": 1, "volume_ml": 12.345, "max_axial_diameter_mm": 31.04, "max_diameter_mm": 33.5,
                           "axial_slice_range": [40, 52], "largest_axial_slice": 46,
                           "centroid_mm": [-101.25, 20.0, -333.3], "confidence": 0.97}],
              "model": {"dataset": "Dataset900_SyntheticLiver", "model_id": "ab12cd34"},
              "model_validation": {"n_cases": 24, "n_tumour_free": 8, "mean_dice": 0.631, "sensitivity": 0.52,
                                   "fp_per_tumour_free": 0.4, "sensitivity_lt1ml": 0.0, "sensitivity_1to10ml": 0.12,
                                   "sensitivity_ge10ml": 0.5}}
    text = findings_text(report)
    assert "Not for diagnosis" in text and "Lesion 1: 12.35 ml" in text and "slices 40-52" in text
    assert "0.0123" in text and "24 cross-validation cases" in text
    _every_number_of_the_text_is_in_the_report(text, report)
    with pytest.raises(AssertionError, match="47"):
        _every_number_of_the_text_is_in_the_report(text.replace("(largest 46)", "(largest 47)"), report)
    # with two lesions, each line carries its own lesion's numbers
    second = {**report["lesions"][0], "lesion": 2, "volume_ml": 0.61, "max_axial_diameter_mm": 9.2,
              "axial_slice_range": [12, 13], "largest_axial_slice": 12, "confidence": 0.81}
    lines = findings_text({**report, "lesions": [report["lesions"][0], second]}).splitlines()
    (first_line,) = [line for line in lines if "Lesion 1:" in line]
    (second_line,) = [line for line in lines if "Lesion 2:" in line]
    assert "12.35 ml" in first_line and "slices 40-52" in first_line and "confidence 0.97" in first_line
    assert "0.61 ml" in second_line and "9.2 mm" in second_line and "slices 12-13 (largest 12)" in second_line


def test_a_corrupt_upload_fails_with_its_reason_and_the_next_job_succeeds(server, setup: dict, tmp_path: Path) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(b"\x5c\x01\x00\x00" + b"\x00" * 200)[:150])
    with server.client() as client:
        bad = submit(client, broken).json()["id"]
        good = submit(client, setup["ct2"]).json()["id"]
        failed = wait_for(client, bad)
        assert failed["state"] == "failed" and failed["files"] == []
        assert "broken.nii.gz" in failed["error"] and str(server.log.parent) not in failed["error"]
        assert wait_for(client, good)["state"] == "done"
        assert client.get("/api/health").json()["worker"]["restarts"] == 0


def test_a_zipped_dicom_series_gets_a_dicom_seg_referencing_it(server, setup: dict, tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from dicom_builders import make_ct_series, write_datasets

    image, _ = read_image(setup["ct"])
    datasets = make_ct_series("SERVE01", image.astype(np.int16), origin=(-80.0, -60.0, 10.0),
                              pixel_spacing=(2.6, 2.6), slice_step=5.0)
    paths = write_datasets(datasets, tmp_path / "export" / "DICOM" / "series 1")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in paths:
            bundle.write(path, path.relative_to(tmp_path / "export"))
    with server.client() as client:
        job = wait_for(client, submit(client, archive).json()["id"])
        assert job["state"] == "done", job
        assert "seg.dcm" in job["files"]
        seg = pydicom.dcmread(io.BytesIO(client.get(f"/api/jobs/{job['id']}/files/seg.dcm").content))
        labels = client.get(f"/api/jobs/{job['id']}/files/labels.nii.gz").content
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
    (tmp_path / "labels.nii.gz").write_bytes(labels)
    served, geometry = read_image(tmp_path / "labels.nii.gz", check_finite=False)
    assert served.shape == image.shape
    assert np.allclose(geometry.spacing, (2.6, 2.6, 5.0)) and np.allclose(geometry.origin, (-80.0, -60.0, 10.0))


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_uploads_refused_before_queueing(server, setup: dict, tmp_path: Path) -> None:
    with server.client() as client:
        def post(name: str, data: bytes, **fields: str) -> httpx.Response:
            return client.post("/api/jobs", files={"file": (name, data)}, data=fields)

        before = client.get("/api/health").json()["jobs"]
        answer = post("scan.png", b"\x89PNG....")
        assert answer.status_code == 400 and "not an accepted upload" in answer.json()["detail"]
        answer = post("series.zip", _zip({"../../evil.dcm": b"x" * 200}))
        assert answer.status_code == 400 and "outside" in answer.json()["detail"]
        answer = post("series.zip", _zip({"/etc/evil.dcm": b"x"}))
        assert answer.status_code == 400 and "outside" in answer.json()["detail"]
        answer = post("series.zip", b"not a zip at all")
        assert answer.status_code == 400 and "not a zip" in answer.json()["detail"]
        assert post("empty.nii.gz", b"").status_code == 400
        answer = post("ct.nii.gz", setup["ct"].read_bytes(), weight_kg="70")
        assert answer.status_code == 400 and "unknown clinical field 'weight_kg'" in answer.json()["detail"]
        assert client.post("/api/jobs", data={"x": "1"}).status_code == 400
        answer = post("ct.nii.gz", setup["ct"].read_bytes(), Age="nan")
        assert answer.status_code == 400 and "must be a number" in answer.json()["detail"]
        # headers that make ITK read another file of the server are refused
        nrrd = (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n"
                b"data file: /etc/passwd\n\n")
        answer = post("ct.nrrd", nrrd)
        assert answer.status_code == 400 and "separate data file" in answer.json()["detail"]
        mha = (b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
               b"ElementDataFile = /etc/passwd\n")
        answer = post("ct.mha", mha)
        assert answer.status_code == 400 and "separate data file" in answer.json()["detail"]
        # a chunked upload (no Content-Length) is cut off at the limit while it streams
        boundary = "smoothsegboundary"

        def body():
            yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                   'filename="big.nii.gz"\r\n\r\n').encode()
            for _ in range(12):
                yield b"\0" * (1024 * 1024)
            yield f"\r\n--{boundary}--\r\n".encode()

        chunked = client.post("/api/jobs", content=body(),
                              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert chunked.status_code == 413
        # another site's page cannot post jobs, nor reach the server through a rebound host name
        assert client.post("/api/jobs", files={"file": ("ct.nii.gz", b"x")},
                           headers={"Origin": "https://evil.example"}).status_code == 403
        assert client.get("/api/health", headers={"Host": "evil.example"}).status_code == 400
        too_big = post("big.nii.gz", os.urandom(int(float(MAX_UPLOAD_GB) * 1024 ** 3) + 1024))
        assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
        assert client.get("/api/health").json()["jobs"] == before  # nothing was queued
    assert not any((server.log.parent / "data" / "jobs").glob("*/input/*.part"))
    assert not any((server.log.parent / "data" / "jobs").glob("*/input/.tmp-*"))  # no half-copied upload left


def test_path_traversal_and_unknown_names_are_refused(server, setup: dict) -> None:
    with server.client() as client:
        job = wait_for(client, submit(client, setup["ct"]).json()["id"])
        assert job["state"] == "done"
        for name in ("..%2Fjobs.sqlite", "..%2F..%2Fjobs.sqlite", "%2e%2e%2finput%2fimage.nii.gz", "ct.nii.gz",
                     "view%2Fct.npy", "report.json%00"):
            assert client.get(f"/api/jobs/{job['id']}/files/{name}").status_code == 404, name
        for job_id in ("..%2F..%2Fjobs.sqlite", "0" * 31, job["id"].upper(), "../" + job["id"]):
            assert client.get(f"/api/jobs/{job_id}").status_code == 404, job_id
        assert client.get(f"/api/jobs/{job['id']}/view/..%2Fct/0").status_code == 404
        assert client.get(f"/api/jobs/{job['id']}/view/axial/100000").status_code == 404
        assert client.get("/static/..%2F..%2Fjobs.py").status_code == 404
        assert client.get(f"/api/jobs/{job['id']}/files/report.json").status_code == 200


def test_killing_the_worker_requeues_its_job(server, setup: dict, tmp_path: Path) -> None:
    with server.client() as client:
        pid = client.get("/api/health").json()["worker"]["pid"]
        restarts = client.get("/api/health").json()["worker"]["restarts"]
        job_id = submit(client, setup["slow"]).json()["id"]
        wait_for(client, job_id, ("running",), interval=0.02)
        os.kill(pid, signal.SIGKILL)
        job = wait_for(client, job_id)
        assert job["state"] == "done" and job["attempts"] == 2, job
        worker = client.get("/api/health").json()["worker"]
        assert worker["restarts"] == restarts + 1 and worker["pid"] != pid and worker["alive"]


def test_twenty_uploads_at_once_all_end_and_memory_stays_bounded(server, setup: dict) -> None:
    with server.client() as client:
        first = wait_for(client, submit(client, setup["ct"]).json()["id"])
        assert first["state"] == "done"
        worker = client.get("/api/health").json()["worker"]
        before = rss_mb(worker["pid"])

        def one(i: int) -> str:
            with server.client() as own:
                answer = submit(own, setup["ct"] if i % 2 else setup["ct2"], f"case {i}.nii.gz")
                assert answer.status_code == 201, answer.text
                return answer.json()["id"]

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            ids = list(pool.map(one, range(20)))
        assert len(set(ids)) == 20
        ends = [wait_for(client, job_id, timeout=600) for job_id in ids]
        assert [job["state"] for job in ends] == ["done"] * 20, [job["error"] for job in ends]
        after = client.get("/api/health").json()["worker"]
        assert after["pid"] == worker["pid"]  # one worker, models loaded once
        assert rss_mb(after["pid"]) < before + 300.0


def test_jobs_survive_a_server_restart(setup: dict, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_server(setup["results"], data, setup["home"])
    with pytest.raises(RuntimeError, match="another smoothseg_serve is using this data folder"):
        start_server(setup["results"], data, setup["home"])  # one server per data folder
    with first.client() as client:
        ids = [submit(client, setup["slow"]).json()["id"], submit(client, setup["ct"]).json()["id"]]
        wait_for(client, ids[0], ("running",), interval=0.02)
    first.stop()  # SIGTERM: the worker goes with the server; the first job is left running, the second queued
    store = JobStore(data / "jobs.sqlite")
    assert [store.get(i).state for i in ids] == ["running", "queued"]
    store.close()
    second = start_server(setup["results"], data, setup["home"])
    try:
        with second.client() as client:
            ends = [wait_for(client, i) for i in ids]
        assert [job["state"] for job in ends] == ["done"] * 2
        assert [job["attempts"] for job in ends] == [1, 1]  # a server stop does not count as a failed try
    finally:
        second.stop()


def test_a_token_guards_the_page_and_every_api_call(setup: dict, tmp_path: Path) -> None:
    token = "correct-horse-battery-staple-42"
    server = start_server(setup["results"], tmp_path / "data", setup["home"], token=token)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as anonymous:
            assert anonymous.get("/api/health").status_code == 401
            assert anonymous.post("/api/jobs", files={"file": ("ct.nii.gz", b"x")}).status_code == 401
            assert anonymous.get("/", headers={"Authorization": "Bearer wrong-token-000000000"}).status_code == 401
            page = anonymous.get("/")
            assert page.status_code == 401 and 'name="token"' in page.text
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert anonymous.post("/login", data={"token": "nope"}).status_code == 401
            signed_in = anonymous.post("/login", data={"token": token})
            assert signed_in.status_code == 303 and token not in signed_in.headers["set-cookie"]
            assert anonymous.get("/").status_code == 200 and anonymous.get("/api/health").status_code == 200
        with server.client() as client:
            assert client.get("/api/health").status_code == 200
    finally:
        server.stop()


def test_binding_beyond_loopback_needs_a_token(setup: dict) -> None:
    done = run_cli("serve", "--models", str(setup["results"]), "--host", "0.0.0.0", "--port", "8999",
                   home=setup["home"], timeout=60)
    assert done.returncode == 2 and "--token" in done.stderr and "0.0.0.0" in done.stderr
    short = run_cli("serve", "--models", str(setup["results"]), "--token", "short", home=setup["home"], timeout=60)
    assert short.returncode == 2 and "16 characters" in short.stderr


# -- the parts ------------------------------------------------------------------------------------------------------
def test_the_queue_hands_each_job_to_one_claimer_and_gives_up_after_max_attempts(tmp_path: Path) -> None:
    stores = [JobStore(tmp_path / "jobs.sqlite") for _ in range(4)]
    ids = [new_job_id() for _ in range(30)]
    for job_id in ids:
        stores[0].create(job_id, "x.nii.gz", ".nii.gz", {})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        claimed = pool.map(lambda s: [job.id for job in iter(lambda: s.claim(os.getpid()), None)], stores)
    claimed = [job_id for batch in claimed for job_id in batch]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    for s in stores:
        s.close()


def test_a_job_whose_worker_keeps_dying_is_given_up_after_max_attempts(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = new_job_id()
    store.create(job_id, "x.nii.gz", ".nii.gz", {})
    assert store.claim(4242).attempts == 1
    assert store.requeue_running(None, "server stopped", count_try=False) == ([job_id], [])
    for attempt in range(1, MAX_ATTEMPTS):
        assert store.claim(4242).attempts == attempt
        assert store.requeue_running(4241, "worker died") == ([], [])  # another worker's jobs only
        assert store.requeue_running(4242, "worker died") == ([job_id], [])
        assert store.get(job_id).state == "queued"
    assert store.claim(4242).attempts == MAX_ATTEMPTS
    assert not store.finish(job_id, 4241) and store.get(job_id).state == "running"  # not that worker's job
    assert store.requeue_running(4242, "the worker died") == ([], [job_id])
    assert not store.finish(job_id, 4242)  # an orphan finishing late changes nothing
    job = store.get(job_id)
    assert job.state == "failed" and "the worker died" in job.error and f"{MAX_ATTEMPTS} tries" in job.error
    store.close()


def test_retention_deletes_old_jobs_and_their_files(tmp_path: Path) -> None:
    settings = ServeSettings(data=tmp_path, keep_days=7)
    store = JobStore(settings.database)
    old, recent = new_job_id(), new_job_id()
    for job_id in (old, recent):
        store.create(job_id, "x.nii.gz", ".nii.gz", {})
        (tmp_path / "jobs" / job_id / "out").mkdir(parents=True)
        store.fail(job_id, "test")
    orphan = tmp_path / "jobs" / new_job_id()  # an upload cut off: a folder without a job
    (orphan / "input").mkdir(parents=True)
    (orphan / "input" / "image.nii.gz.part").write_bytes(b"partial")
    assert remove_expired(store, settings) == [] and orphan.exists()  # recent: may still be uploading
    removed = remove_expired(store, settings, now=time.time() + 7 * 86400 + 60)
    assert sorted(removed) == sorted([old, recent, orphan.name]) and not orphan.exists()
    assert store.get(old) is None and not (tmp_path / "jobs" / old).exists()
    store.close()


def test_zip_checks(tmp_path: Path) -> None:
    good = tmp_path / "good.zip"
    good.write_bytes(_zip({"series/1.dcm": b"x" * 10, "series/2.dcm": b"y" * 10}))
    check_zip(good, 1000)
    for members, problem in (({"a/../../b.dcm": b"x"}, "outside"), ({"C:/b.dcm": b"x"}, "outside"),
                             ({"\\evil.dcm": b"x"}, "outside"), ({"big.dcm": b"0" * 5000}, "unpacks to")):
        bad = tmp_path / "bad.zip"
        bad.write_bytes(_zip(members))
        with pytest.raises(UploadError, match=problem):
            check_zip(bad, 1000)


def test_axial_measures_and_viewer_slices_do_not_depend_on_how_the_file_is_stored(tmp_path: Path) -> None:
    """The same anatomy stored as is, flipped (x and z) and with permuted axes (as a sagittal acquisition is stored):
    same lesion measures, same displayed slices; the axial view has the patient's right (smallest LPS x) on the
    left and the front (smallest y) at the top."""
    rng = np.random.default_rng(0)
    ct = rng.integers(-100, 200, size=(20, 24, 28)).astype(np.int16)
    ct[:, 0, 0] = 1000  # marker: the patient's right-front corner
    labels = np.zeros(ct.shape, np.uint8)
    labels[2:18, 3:21, 3:25] = 1
    labels[5:9, 8:12, 10:16] = 2  # slices 5-8 from the feet
    spacing = (0.8, 0.7, 2.5)
    stored = {}
    for name, transform in (("plain", lambda im: im), ("flipped", lambda im: sitk.Flip(im, [True, False, True])),
                            ("permuted", lambda im: sitk.PermuteAxes(im, [2, 0, 1]))):
        images = []
        for array in (ct, labels):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(spacing)
            images.append(transform(image))
        stored[name] = (sitk.GetArrayFromImage(images[0]), sitk.GetArrayFromImage(images[1]),
                        Geometry.from_sitk(images[0]))
    assert stored["permuted"][0].shape == (24, 28, 20) and stored["flipped"][0][0, 0, 0] != 1000
    lesions = {name: lesion_table(a, b == 2, g)[0] for name, (a, b, g) in stored.items()}
    assert all(lesion["axial_slice_range"] == [5, 8] for lesion in lesions.values())
    assert len({lesion["largest_axial_slice"] for lesion in lesions.values()}) == 1
    expected = np.hypot(3 * 0.7, 5 * 0.8)
    assert all(lesion["max_axial_diameter_mm"] == pytest.approx(expected) for lesion in lesions.values())
    for name, (array, label_array, geometry) in stored.items():
        write_view(array, geometry, label_array, {"lesions": [lesions[name]]}, tmp_path / name)
    for plane, index in (("axial", 6), ("coronal", 10), ("sagittal", 12), ("axial", 0), ("sagittal", 27)):
        views = {name: slice_bytes(tmp_path / name, plane, index) for name in stored}
        assert views["plain"] == views["flipped"] == views["permuted"], (plane, index)
    axial = np.frombuffer(slice_bytes(tmp_path / "permuted", "axial", 3)[:24 * 28 * 2], "<i2").reshape(24, 28)
    assert axial[0, 0] == 1000
