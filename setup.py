from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "monai_hqanogan" / "__init__.py").read_text()).group(1)

setup(
    name="monai-hqanogan",
    version=VERSION,
    description="HQ-AnoGAN (StyleGAN2-ADA + pSp encoder) anomaly detection for medical images, as a MONAI plugin",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["monai_hqanogan", "monai_hqanogan.*"]),
    install_requires=[
        "monai>=1.4",
        "torch>=2.1",
        "pytorch-ignite>=0.5",
        "nibabel",
        "scikit-image",
        "matplotlib",
        "tensorboard",
        # progress bars (ignite's own ProgressBar needs it too)
        "tqdm",
        # PNG sample grids (already required by matplotlib)
        "pillow",
        # the command line of MONAI bundles (python -m monai.bundle run / verify_net_in_out / ckpt_export)
        "fire",
        # synthetic lesions (ndimage) and near-duplicate grouping (sparse connected components); scikit-image
        # already needs it, declared because the package imports it directly
        "scipy",
    ],
    extras_require={
        # build and setuptools: tests/test_wheel_install.py builds the wheel and the sdist with
        # `python -m build --no-isolation` (setuptools >= 70.1 writes wheels without the `wheel` package)
        "test": ["pytest>=7", "pytest-xdist", "scikit-learn", "hypothesis", "build", "setuptools>=70.1"],
        "dev": [
            "pytest>=7",
            "pytest-xdist",
            "ruff",
            "scikit-learn",
            "hypothesis",
            "build",
            "setuptools>=70.1",
            # the tutorials (tutorials/NN_*.py, jupytext percent format): tests/test_tutorials.py turns each into a
            # notebook and executes it in a fresh Jupyter kernel (nbclient + ipykernel) in the small setting, and
            # tutorials/build_notebooks.py regenerates the committed .ipynb files with their outputs
            "jupytext",
            "nbclient",
            "nbformat",
            "ipykernel",
        ],
        # experiment tracking: `python -m monai.bundle run ... --tracking mlflow` (MONAI's MLFlowHandler; the train
        # configs log every loss of the trainers' step output, see monai_hqanogan/workflows/tracking.py).
        # mlflow-skinny is MLflow's tracking client without its server and UI; SQLAlchemy and Alembic add the SQLite
        # store that MONAI's default tracking_uri (sqlite:///<output_dir>/mlruns.db) needs, as MLflow 3 refuses the
        # file store and MONAI's handler refuses file:// URIs. Measured (MLflow 3.17): these three install in 18 s to
        # 174 MB in a fresh venv (110 MB next to the dev extra); `pip install mlflow` takes 45 s and 851 MB (pandas,
        # pyarrow, scikit-learn, Flask, ...), which only its UI (`mlflow ui`) needs.
        "mlflow": ["mlflow-skinny>=2.12.2", "sqlalchemy", "alembic"],
        # DICOM inputs of prepare and inference (a .dcm file, or a folder of them as one series): MONAI's
        # PydicomReader. Compressed transfer syntaxes that Pillow cannot decode also need pylibjpeg or GDCM
        # (see pydicom's documentation); MONAI's GPU decoder plugin needs nvImageCodec and CuPy.
        "dicom": ["pydicom"],
        # the MONAI Label app (monai_hqanogan/apps/monailabel). MONAI Label 0.8.5 itself goes in with --no-deps
        # (its requirements pull sam2 and its own torch pins): `pip install --no-deps monailabel==0.8.5`, then this
        # extra, which lists what the server and its writer import, in an environment whose torchvision matches
        # torch (e.g. torch==2.14.1 torchvision==0.29.1; the PyPI torchvision does not import next to torch 2.13)
        "monailabel": [
            "torchvision",
            "uvicorn",
            "fastapi",
            "pydantic",
            "pydantic-settings",
            "python-dotenv",
            "python-multipart",
            "httpx",
            "schedule",
            "dicomweb-client[gcp]",
            "timeloop",
            "expiringdict",
            "expiring_dict",
            "cachetools",
            "watchdog",
            "pydicom<3",
            "pydicom-seg",
            "pynetdicom<2.1",
            "pynrrd",
            "numpymaxflow",
            "girder-client",
            "passlib",
            "pyjwt",
            "bcrypt",
            "shapely",
            "requests-toolbelt",
            "google-auth",
            "itk",
            "psutil",
            "pyyaml",
            "einops",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
