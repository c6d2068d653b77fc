"""Inference glue of the bundles: list and check the inputs, write the maps, make one run one consistent set.

:func:`list_inference_inputs` lists the images of a run (a file, a folder or a datalist) and checks each from its
header before any work.

:class:`InferenceOutputFolder` makes one run write one consistent set: every writer writes into a hidden staging
folder, which becomes the output folder only when the run completes (with a ``manifest.json`` of what it wrote);
outputs keep the inputs' sub-folders below their common root; two inputs with one output name, an output folder that
is, contains or lies inside an input folder, and an output folder holding files the tool did not write are refused
before any work.

The inferer, the record transform and the score and panel writers have their own homes, and are imported here under
their old names: :class:`~monai_hqanogan.inferers.SliceAnomalyInferer`,
:class:`~monai_hqanogan.transforms.FlattenAnomalyRecordd`, :class:`~monai_hqanogan.handlers.AnomalyScoreSaver`,
:class:`~monai_hqanogan.handlers.AnomalyPanelSaver` and the map writer
:class:`~monai_hqanogan.handlers.SaveAnomalyMapsd` (PNG maps for raster inputs, NIfTI for volumes).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.utils import IgniteInfo, min_version, optional_import

from monai_hqanogan.data.image_files import (
    IMAGE_SUFFIXES,
    MAX_SLICE_PIXELS,
    MAX_VOLUME_VOXELS,
    check_size_caps,
    check_slice_axis,
    image_suffix,
    item_file_name,
    output_stem,
    verify_image_file,
)
from monai_hqanogan.handlers.map_saver import (
    OUTPUT_EXTS,
    PNG_THRESHOLD_LEVEL,
    SaveAnomalyMapsd,
    anomaly_map_ext,
    check_output_ext,
)
from monai_hqanogan.handlers.panel_saver import AnomalyPanelSaver
from monai_hqanogan.handlers.score_saver import AnomalyScoreSaver
from monai_hqanogan.inferers.slice_inferer import SliceAnomalyInferer
from monai_hqanogan.transforms.dictionary import FlattenAnomalyRecordd
from monai_hqanogan.utils.checkpoint import write_text_atomic
from monai_hqanogan.utils.run_dir_lock import process_alive
from monai_hqanogan.utils.staging import STAGING_OWNER, create_staging_dir, remove_stale_staging_dirs
from monai_hqanogan.utils.strict_json import strict_json
from monai_hqanogan.workflows.checks import datalist_items
from monai_hqanogan.workflows.stages import check_writable

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "IMAGE_SUFFIXES",
    "SliceAnomalyInferer",
    "FlattenAnomalyRecordd",
    "SaveAnomalyMapsd",
    "OUTPUT_EXTS",
    "PNG_THRESHOLD_LEVEL",
    "check_output_ext",
    "anomaly_map_ext",
    "AnomalyScoreSaver",
    "AnomalyPanelSaver",
    "InferenceOutputFolder",
    "OUTPUT_MANIFEST",
    "list_inference_inputs",
    "output_stem",
]


#: the file in which :class:`InferenceOutputFolder` lists every file one run wrote (size and SHA-256)
OUTPUT_MANIFEST = "manifest.json"
_MANIFEST_TOOL = "monai_hqanogan.workflows.InferenceOutputFolder"
_MANIFEST_FORMAT = 1


def _inference_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of the inference set in ``folder``, None when it holds none."""
    try:
        manifest = json.loads((folder / OUTPUT_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("tool") == _MANIFEST_TOOL else None


def list_inference_inputs(
    path: str | os.PathLike,
    datalist_key: str = "test",
    base_dir: str | os.PathLike | None = None,
    resolution: int | None = None,
    slice_axis: int = -1,
    max_slice_pixels: int = MAX_SLICE_PIXELS,
    max_volume_voxels: int = MAX_VOLUME_VOXELS,
) -> list[dict[str, Any]]:
    """The data dictionaries to run inference on, from a file, a folder or a datalist, checked before any work.

    Every file is checked by :func:`~monai_hqanogan.data.image_files.verify_image_file`, its size and shape from its
    header before any pixel is read (:func:`~monai_hqanogan.data.image_files.check_image_shape`): at most
    ``max_slice_pixels`` per slice and ``max_volume_voxels`` in all, 2D images or 3D volumes (a 4th NIfTI dimension
    holds channels, averaged like colour channels), and slices (along ``slice_axis``) with no side under
    :data:`~monai_hqanogan.data.image_files.MIN_SIDE` pixels, in the file or at ``resolution``. So every image that
    passes is scored and its map written back on its own spatial grid (one channel).

    Args:
        path: an image file; a folder of images (PNG, JPEG, NIfTI, ...; a sub-folder of ``.dcm`` files is one DICOM
            series, and so is the folder itself when its only images are ``.dcm`` files; other files and hidden files
            are ignored); or a MONAI datalist JSON file (``datalist_key`` is read, paths relative to ``base_dir`` or
            to the JSON's folder). 2D images and 3D volumes may be mixed. A folder holding the outputs of an
            inference run (its ``manifest.json``) is refused: its maps are not images to score. So are a path that is
            neither a regular file nor a folder (a FIFO, a device) and loose ``.dcm`` files next to other images or
            series sub-folders (they would be dropped).
        datalist_key: the list to read from a datalist JSON.
        base_dir: base folder of the datalist's relative paths (default: the JSON's folder).
        resolution: the model resolution (each slice's longest side is resized to it); None: not checked.
        slice_axis: the axis along which volumes are sliced (as the inferer's).
        max_slice_pixels: the pixel cap of one 2D image or volume slice (:data:`MAX_SLICE_PIXELS`).
        max_volume_voxels: the voxel cap of one image, channels included
            (:data:`~monai_hqanogan.data.image_files.MAX_VOLUME_VOXELS`).

    Raises:
        FileNotFoundError: when ``path`` or a listed file does not exist.
        ValueError: when ``path`` is neither a file nor a folder, a folder holds no image or loose ``.dcm`` files
            next to other images or series, a datalist is not JSON or has no ``datalist_key``, or a file is
            empty, truncated, not an image, beyond a size cap, not 2D or 3D, has a dimension of size 0, or a side
            the networks cannot use (under 2 px, in the file or at ``resolution``), naming the file.
        ImportError: for DICOM without pydicom.
    """
    check_size_caps(max_slice_pixels, max_volume_voxels)
    slice_axis = check_slice_axis(slice_axis)
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"inference input {str(path)!r} does not exist; give an image, a folder or a datalist.")
    if not path.is_file() and not path.is_dir():
        raise ValueError(
            f"inference input {str(path)!r} is neither a file nor a folder (a FIFO, a device or a socket, or a link "
            "to one): give an image, a folder or a datalist."
        )
    if path.is_file() and image_suffix(path) == ".json":
        items = datalist_items(path, datalist_key, base_dir=base_dir)
    elif path.is_file():
        items = [{"image": str(path)}]
    else:
        items = [{"image": str(p)} for p in _folder_images(path)]
    for item in items:
        verify_image_file(
            item["image"],
            "image listed for inference",
            resolution=resolution,
            slice_axis=slice_axis,
            max_slice_pixels=max_slice_pixels,
            max_volume_voxels=max_volume_voxels,
        )
    return items


def _folder_images(folder: Path) -> list[Path]:
    """The images of an input folder (see :func:`list_inference_inputs`): its image files, each sub-folder holding
    ``.dcm`` files as one DICOM series, or the folder itself as one series when it holds nothing but ``.dcm`` files
    among its images. Loose ``.dcm`` files next to other images or series sub-folders are refused, named (they would
    be dropped: a DICOM slice is read as part of its series)."""
    if _inference_manifest(folder) is not None:
        raise ValueError(
            f"folder {str(folder)!r} holds the outputs of an inference run ({OUTPUT_MANIFEST}): its anomaly maps are "
            "not images to score; give the folder of the images."
        )
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    loose = [p for p in entries if not p.is_dir() and image_suffix(p) == ".dcm"]
    files = [p for p in entries if p.is_file() and image_suffix(p) in IMAGE_SUFFIXES and image_suffix(p) != ".dcm"]
    series = [p for p in entries if p.is_dir() and any(q.suffix.lower() == ".dcm" for q in p.iterdir())]
    if loose and (files or series):
        raise ValueError(
            f"folder {str(folder)!r} holds loose DICOM files ({_some([p.name for p in loose])}) next to "
            f"{'other images' if files else 'DICOM series sub-folders'} ({_some([p.name for p in files + series])}): "
            "put the .dcm files of one series in a sub-folder (each sub-folder of .dcm files is read as one series), "
            "or give that folder alone."
        )
    if loose:
        return [folder]  # the folder itself is one DICOM series
    if not files and not series:
        raise ValueError(f"folder {str(folder)!r} holds no image ({', '.join(IMAGE_SUFFIXES)}).")
    return files + series


def _listed(manifest: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The files a manifest lists: relative path -> {"bytes", "sha256"}."""
    files = manifest.get("files")
    return {str(k): v for k, v in files.items() if isinstance(v, Mapping)} if isinstance(files, Mapping) else {}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tree(folder: Path) -> tuple[set[str], set[str]]:
    """(entries that are not folders: files, links, ...; folders) under ``folder``, as relative POSIX paths."""
    entries, folders = set(), set()
    for root, dirs, files in os.walk(folder):  # links to folders are listed, not followed
        rel = Path(root).relative_to(folder)
        for name in dirs:
            (entries if os.path.islink(os.path.join(root, name)) else folders).add((rel / name).as_posix())
        entries.update((rel / name).as_posix() for name in files)
    return entries, folders


def _ancestors(names: Sequence[str] | set[str]) -> set[str]:
    return {parent.as_posix() for name in names for parent in Path(name).parents if parent != Path(".")}


def _some(names: Sequence[str] | set[str], limit: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


class InferenceOutputFolder:
    """One inference run writes one consistent set of files into ``output_dir``, or leaves it as it was.

    Every writer of the run (:class:`SaveAnomalyMapsd`, :class:`AnomalyScoreSaver`, :class:`AnomalyPanelSaver`)
    writes into :attr:`staging_dir`, a new hidden folder next to ``output_dir`` (``.<name>.incomplete-<run id>``).
    When the run completes, a ``manifest.json`` listing every file written (size, SHA-256) is added and the staging
    folder is renamed to ``output_dir``; when it fails, the staging folder is removed and ``output_dir`` is left as
    it was. The staging folder carries an owner file (PID, host, process start:
    :func:`~monai_hqanogan.utils.staging.create_staging_dir`), so a run killed with SIGKILL leaves a folder the next
    run recognises: :meth:`begin` removes the staging folders of ``output_dir`` whose owner has ended, and leaves
    alone those of runs that still run, of other hosts, and every folder without the owner file (a look-alike name
    is not proof that this tool wrote it). A staging folder kept on purpose (a complete set that could not be moved
    into place) has its owner file removed, so it is never deleted.

    :meth:`check` refuses, before any work (the bundle's ``initialize`` calls it):

    - two inputs that would be written under one name (outputs keep the inputs' sub-folders below their common
      folder :attr:`data_root`, as MONAI's ``SaveImage(data_root_dir=...)`` does, so only inputs in one folder whose
      file names differ in their extension or letter case alone, or an input listed twice, collide);
    - an output folder that is, contains or lies inside an input folder (the folder given as input, a DICOM series),
      or that is or contains the folder of an input file, so a later run never scores this run's maps as images;
    - an output folder that holds anything but an unchanged earlier set written by this class (exactly the files
      its ``manifest.json`` lists; some may be missing): a completed run replaces such a set, and deletes nothing
      else.

    Attach it to the engine after the other writers (``handlers`` of the bundle's ``inference.json``): it finishes
    the set when the run completes, after the score files are written.

    Args:
        output_dir: the output folder.
        inputs: the run's data dicts (:func:`list_inference_inputs`).
        source: what the inputs were listed from (a folder, an image file or a datalist); a folder is an input
            folder.
        image_key: key of the image path in ``inputs`` and of the image in the engine's output.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        inputs: Sequence[Mapping[str, Any]],
        source: str | os.PathLike | None = None,
        image_key: str = "image",
    ) -> None:
        self.output_dir = Path(output_dir).expanduser().resolve()
        self.image_key = image_key
        self.inputs = [os.fspath(item[image_key]) for item in inputs]
        self.source = Path(source).expanduser() if source is not None else None
        folders = sorted({os.path.dirname(os.path.abspath(p)) for p in self.inputs})
        #: the inputs' common folder: outputs keep the inputs' sub-folders below it
        self.data_root = os.path.commonpath(folders) if folders else ""
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
        #: where the writers write during the run; renamed to ``output_dir`` when the run completes
        self.staging_dir = self.output_dir.parent / f".{self.output_dir.name}.incomplete-{self.run_id}"
        self._checked = self._created = self._keep = False
        self._seen: dict[str, str] = {}
        self._log = logging.getLogger(type(self).__name__)

    # ------------------------------------------------------------------ checks before any work
    def check(self) -> InferenceOutputFolder:
        """Refuse the run, before any work, when its outputs would collide or mix with anything; see the class.

        Raises:
            ValueError: two inputs with one output name; an output folder that is, contains or lies inside an
                input folder.
            FileExistsError: an output folder holding anything but an unchanged earlier set of this class.
            PermissionError: an output folder that cannot be written.
        """
        self._check_names()
        self._check_overlap()
        self._earlier_set()
        check_writable(self.output_dir.parent)
        self._checked = True
        return self

    def _check_names(self) -> None:
        seen: dict[str, str] = {}
        for path in self.inputs:
            stem = output_stem(path, self.data_root)
            if stem.casefold() not in seen:
                seen[stem.casefold()] = path
                continue
            other = seen[stem.casefold()]
            if os.path.abspath(other) == os.path.abspath(path):
                raise ValueError(f"input {path!r} is listed twice: list every image once.")
            raise ValueError(
                f"inputs {other!r} and {path!r} would both be written as {stem!r} (anomaly map, label and panel are "
                f"named after the input's folder below {self.data_root!r} and its file name without extension, "
                "letter case ignored): rename one of them, or score them in two runs with separate output folders."
            )

    def _check_overlap(self) -> None:
        out = self.output_dir
        advice = (
            "choose an output folder outside every input folder (a later run on that folder would read this run's "
            "maps as images)."
        )
        folders = [Path(p).resolve() for p in self.inputs if Path(p).is_dir()]  # DICOM series
        if self.source is not None and self.source.is_dir():
            folders.insert(0, self.source.resolve())
        for folder in folders:
            if out == folder:
                raise ValueError(f"the output folder {out} is the input folder {folder}: {advice}")
            if folder in out.parents:
                raise ValueError(f"the output folder {out} lies inside the input folder {folder}: {advice}")
            if out in folder.parents:
                raise ValueError(f"the input folder {folder} lies inside the output folder {out}: {advice}")
        for path in self.inputs:
            folder = Path(path).resolve().parent
            if out == folder:
                raise ValueError(f"the output folder {out} is the folder of the input {path!r}: {advice}")
            if out in folder.parents:
                raise ValueError(f"the output folder {out} contains the input {path!r}: {advice}")

    def _earlier_set(self) -> dict[str, Any] | None:
        """The manifest of the unchanged earlier set in ``output_dir``; None for a missing or empty folder."""
        out = self.output_dir
        if not out.exists():
            return None
        if not out.is_dir():
            raise FileExistsError(f"the output folder {out} is a file: choose another --output_dir.")
        entries, folders = _tree(out)
        if not entries and not folders:
            return None
        manifest = _inference_manifest(out)
        how = (
            "choose a new or empty --output_dir, or move those files away (a run replaces only an unchanged set "
            f"written by an earlier run, which its {OUTPUT_MANIFEST} lists, and deletes nothing else)."
        )
        if manifest is None:
            raise FileExistsError(
                f"the output folder {out} is not empty ({_some(entries | folders)}) and holds no {OUTPUT_MANIFEST} "
                f"of an earlier inference run: {how}"
            )
        files = _listed(manifest)
        listed = set(files)
        foreign = (entries - listed - {OUTPUT_MANIFEST}) | (folders - _ancestors(listed))
        if foreign:
            raise FileExistsError(
                f"the output folder {out} holds an earlier inference set and also files that set did not write "
                f"({_some(foreign)}): {how}"
            )
        changed = []
        for name in sorted(entries & listed):
            path, info = out / name, files[name]
            if path.is_symlink() or path.stat().st_size != info.get("bytes") or _sha256(path) != info.get("sha256"):
                changed.append(name)
        if changed:
            raise FileExistsError(
                f"the output folder {out} holds an earlier inference set whose files changed since it was written "
                f"({_some(changed)}): {how}"
            )
        return manifest

    # ------------------------------------------------------------------ the run
    def recover_replaced(self) -> list[Path]:
        """Deal with the ``.<output name>.replaced-<run id>`` folders a run killed inside :meth:`commit` left (between
        moving the earlier set aside and moving its own set into place); returns the folders restored or removed.

        Only a folder holding this tool's ``manifest.json`` whose run id names a process of this host that has ended
        is touched (a live run's folder, and any folder without the manifest, are left alone):

        - ``output_dir`` is missing: the folder is the earlier set and is renamed back to ``output_dir``, with a
          warning (restoring loses nothing; the killed run's own complete set stays in its ``.incomplete-*`` folder,
          without owner file, so it is never deleted); with more than one such folder, nothing is moved and a
          FileExistsError names them;
        - ``output_dir`` holds a complete set (its manifest): the folder is an earlier set already replaced, and the
          files its manifest lists are deleted (files it did not list are left there, with a warning).

        Raises:
            FileExistsError: ``output_dir`` is missing and more than one leftover could be the earlier set.
        """
        leftovers = []
        for path in sorted(self.output_dir.parent.glob(f".{glob.escape(self.output_dir.name)}.replaced-*")):
            manifest = None if path.is_symlink() or not path.is_dir() else _inference_manifest(path)
            pid = path.name.rsplit(".replaced-", 1)[1].split("-")
            if manifest is None or len(pid) != 4 or not pid[2].isdigit() or process_alive(int(pid[2]), None):
                continue  # not this tool's, or its run may still be committing
            leftovers.append((path, manifest))
        if not leftovers:
            return []
        if not self.output_dir.exists() and not self.output_dir.is_symlink():
            if len(leftovers) > 1:
                raise FileExistsError(
                    f"the output folder {self.output_dir} is missing and earlier inference sets were left by killed "
                    f"runs in {', '.join(str(p) for p, _ in leftovers)}: rename the one to keep to {self.output_dir}."
                )
            path = leftovers[0][0]
            os.rename(path, self.output_dir)
            warnings.warn(
                f"a run killed while replacing {self.output_dir} left the earlier set in {path}: restored it.",
                stacklevel=2,
            )
            return [path]
        if _inference_manifest(self.output_dir) is None:
            return []  # not a complete set there: keep the earlier ones
        for path, manifest in leftovers:
            self._remove_set(path, manifest)
            warnings.warn(f"removed {path}, an earlier set a killed run had already replaced.", stacklevel=2)
        return [path for path, _ in leftovers]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.begin)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check_outputs)
        engine.add_event_handler(Events.COMPLETED, self.commit)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    def begin(self, engine: Engine | None = None) -> Path:
        """Remove the staging folders that ended runs left next to ``output_dir`` (:meth:`remove_stale`), and create
        this run's, a new folder with its owner file; runs :meth:`check` first if it has not run."""
        if not self._checked:
            self.check()
        self.recover_replaced()
        self.remove_stale()
        create_staging_dir(self.staging_dir, "an inference run")  # a new name: nothing is overwritten
        self._created, self._keep, self._seen = True, False, {}
        return self.staging_dir

    def remove_stale(self) -> list[Path]:
        """Remove the staging folders ``.<output name>.incomplete-*`` next to ``output_dir`` whose owner file names a
        process of this host that has ended (a run killed with SIGKILL), with a warning each; returns them. Folders of
        live runs, of other hosts and without the owner file are left alone
        (:func:`~monai_hqanogan.utils.staging.remove_stale_staging_dirs`)."""
        pattern = f".{glob.escape(self.output_dir.name)}.incomplete-*"
        return remove_stale_staging_dirs(self.output_dir.parent, pattern)

    def _check_outputs(self, engine: Engine) -> None:
        """Guard of what was checked before the run: no two images of the run are written under one name."""
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            name = item_file_name(item, self.image_key)
            key = output_stem(name, self.data_root).casefold()
            if key in self._seen:
                raise ValueError(
                    f"inputs {self._seen[key]!r} and {name!r} were written under one name: the run is dropped."
                )
            self._seen[key] = name

    def _failed(self, engine: Engine, error: BaseException) -> None:
        self.discard()
        raise error

    def discard(self) -> None:
        """Remove the staging folder of a failed run (only what this run wrote is there)."""
        if self._created and not self._keep and self.staging_dir.is_dir():
            shutil.rmtree(self.staging_dir)
            self._log.info(f"the run failed: nothing was written to {self.output_dir}")
        self._created = False

    def commit(self, engine: Engine | None = None) -> Path:
        """Add the manifest and make the staging folder ``output_dir``, replacing an unchanged earlier set."""
        entries, _ = _tree(self.staging_dir)
        paths = {name: self.staging_dir / name for name in sorted(entries - {OUTPUT_MANIFEST, STAGING_OWNER})}
        files = {name: {"bytes": path.stat().st_size, "sha256": _sha256(path)} for name, path in paths.items()}
        manifest = {
            "tool": _MANIFEST_TOOL,
            "format": _MANIFEST_FORMAT,
            "run_id": self.run_id,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data_root": self.data_root,
            "inputs": self.inputs,
            "files": files,
        }
        write_text_atomic(self.staging_dir / OUTPUT_MANIFEST, strict_json(manifest))
        # the set is complete: from here the folder is kept or becomes output_dir, never removed as a leftover
        (self.staging_dir / STAGING_OWNER).unlink(missing_ok=True)
        try:
            earlier = self._earlier_set()
        except FileExistsError as err:  # something was written there during the run: keep both, tell
            self._keep = True
            raise FileExistsError(f"{err} This run's complete set is kept in {self.staging_dir}.") from err
        replaced = None
        try:
            if earlier is not None:
                replaced = self.output_dir.parent / f".{self.output_dir.name}.replaced-{self.run_id}"
                os.rename(self.output_dir, replaced)
            elif self.output_dir.is_dir():
                os.rmdir(self.output_dir)  # empty
            os.rename(self.staging_dir, self.output_dir)
        except OSError as err:
            if replaced is not None and replaced.is_dir() and not self.output_dir.exists():
                os.rename(replaced, self.output_dir)
            self._keep = True
            raise OSError(
                f"cannot move {self.staging_dir} to {self.output_dir}: {err}; the set is kept there."
            ) from err
        self._created = False
        if replaced is not None:
            self._remove_set(replaced, earlier)
        self._log.info(f"{len(files)} files -> {self.output_dir} (listed in {OUTPUT_MANIFEST})")
        return self.output_dir

    def _remove_set(self, folder: Path, manifest: Mapping[str, Any]) -> None:
        """Delete the earlier set moved to ``folder``: the files its manifest lists, then its emptied folders."""
        entries, folders = _tree(folder)
        listed = set(_listed(manifest))
        for name in sorted(entries & (listed | {OUTPUT_MANIFEST})):
            (folder / name).unlink()
        try:
            for name in sorted(folders & _ancestors(listed), key=lambda n: -n.count("/")):
                (folder / name).rmdir()
            folder.rmdir()
        except OSError:
            self._log.warning(f"the earlier set's folder {folder} still holds files it did not write: left there.")
