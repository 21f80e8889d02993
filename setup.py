"""Install smoothseg: ``pip install -e ".[test]"`` (add ``dicom`` for the HCC-TACE-Seg converter)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "smoothseg" / "__init__.py").read_text()).group(1)

setup(
    name="smoothseg",
    version=VERSION,
    description="Self-configuring liver and liver-tumour segmentation in CT (SmoothSegNet: cascade, "
                "TLVR smoothing, SegResNetVAE, active contours)",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["smoothseg", "smoothseg.*", "dataset_conversion", "dataset_conversion.*"]),
    package_data={"smoothseg.serve": ["static/*"]},
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "SimpleITK>=2.2",
        "batchgenerators>=0.25",
        "scikit-image>=0.21",
        "scikit-learn>=1.3",
        "pandas>=2.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=7.4", "pytest-xdist>=3.3", "ruff>=0.4", "pydicom>=2.4", "highdicom>=0.22",
                 "openpyxl>=3.1", "dask[distributed]>=2024.1", "playwright>=1.40",
                 "pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0", "pyjpegls>=1.2",
                 "fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "httpx>=0.27",
                 "openvino>=2024.0", "onnxruntime>=1.17", "onnx>=1.15"],
        "dicom": ["pydicom>=2.4", "highdicom>=0.22", "openpyxl>=3.1"],
        "cluster": ["dask[distributed]>=2024.1"],
        # faster CPU prediction (smoothseg_predict --engine); onnxruntime and onnx for the comparison engine
        "cpu-fast": ["openvino>=2024.0", "onnxruntime>=1.17", "onnx>=1.15"],
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "pydicom>=2.4", "highdicom>=0.22"],
    },
    entry_points={
        "console_scripts": [
            "smoothseg_make_demo_dataset=smoothseg.cli.make_demo_dataset:main",
            "smoothseg_verify_dataset=smoothseg.cli.verify_dataset:main",
            "smoothseg_convert_hcc_tace_seg=smoothseg.cli.convert_hcc_tace_seg:main",
            "smoothseg_convert_msd=smoothseg.cli.convert_msd:main",
            "smoothseg_plan_and_preprocess=smoothseg.cli.plan_and_preprocess:main",
            "smoothseg_train=smoothseg.cli.train:main",
            "smoothseg_predict=smoothseg.cli.predict:main",
            "smoothseg_export_model=smoothseg.cli.export_model:main",
            "smoothseg_install_model=smoothseg.cli.install_model:main",
            "smoothseg_evaluate=smoothseg.cli.evaluate:main",
            "smoothseg_plot_overlay=smoothseg.cli.plot_overlay:main",
            "smoothseg_review=smoothseg.cli.review:main",
            "smoothseg_demo=smoothseg.cli.demo:main",
            "smoothseg_ablate=smoothseg.cli.ablate:main",
            "smoothseg_serve=smoothseg.cli.serve:main",
        ],
    },
)
