"""Planted identifiers and the list of every DICOM file the test suite reads.

``plant_identifiers`` copies a real DICOM file with distinctive made-up identifiers written into
the places PHI hides in practice: the patient module, free text, staff names, a nested sequence
item and a private element. PHI tests plant them into every fixture and check that none comes
out of de-identification or the pipeline.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.catalog.acquire import package_folder
from medtrinity_assets.paths import realdata_dir

SITE = Path(pydicom.__file__).resolve().parent.parent
DATA_STORE = SITE / "data_store" / "data"
PYDICOM_FILES = SITE / "pydicom" / "data" / "test_files"


@dataclass(frozen=True)
class PlantedIdentifiers:
    """Made-up values long and odd enough that a byte scan cannot match them by chance."""

    patient_name: str = "Zyxwv^Plantedname"
    patient_id: str = "PLANTED-MRN-83311"
    birth_date: str = "19010203"
    other_patient_id: str = "PLANTED-OTHER-47120"
    address: str = "77 Plantedaddress Lane, Quxville"
    institution: str = "Plantedinstitution Qwert Hospital"
    referring_physician: str = "Qwrtz^Plantedreferrer"
    accession: str = "PLANTEDACC44711"  # SH: at most 16 characters
    study_id: str = "PLSTUDY90817"  # SH
    operator: str = "Vbnmq^Plantedoperator"
    image_comment: str = "Plantedcomment about patient Zyxwv"
    nested_request_id: str = "PLANTEDREQ55213"  # SH, in RequestAttributesSequence
    nested_observer: str = "Plantedverifier^Jklmn"  # PN, in VerifyingObserverSequence
    private_value: str = "PLANTED-PRIVATE-90210"
    # An instance UID referenced from a kept sequence: de-identification must replace it.
    referenced_uid: str = "1.2.826.0.1.3680043.9.7133.8331147120.19010203"

    def strings(self) -> list[str]:
        return list(astuple(self))


PLANTED = PlantedIdentifiers()
PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "MEDTRINITY TEST CREATOR"


def plant_identifiers(path_in: Path, path_out: Path, identifiers: PlantedIdentifiers = PLANTED) -> None:
    """Write a copy of ``path_in`` (pixels untouched) with ``identifiers`` planted in its header."""
    # force: pydicom's rtstruct.dcm has no preamble; the copy keeps the file's own framing.
    ds = pydicom.dcmread(path_in, force=True)
    ds.PatientName = identifiers.patient_name
    ds.PatientID = identifiers.patient_id
    ds.PatientBirthDate = identifiers.birth_date
    ds.OtherPatientIDs = identifiers.other_patient_id
    ds.PatientAddress = identifiers.address
    ds.InstitutionName = identifiers.institution
    ds.ReferringPhysicianName = identifiers.referring_physician
    ds.AccessionNumber = identifiers.accession
    ds.StudyID = identifiers.study_id
    ds.OperatorsName = identifiers.operator
    ds.ImageComments = identifiers.image_comment

    request = Dataset()
    request.RequestedProcedureID = identifiers.nested_request_id
    request.ScheduledProcedureStepID = identifiers.nested_request_id
    ds.RequestAttributesSequence = [request]
    observer = Dataset()
    observer.VerifyingObserverName = identifiers.nested_observer
    observer.VerifyingOrganization = identifiers.institution
    ds.VerifyingObserverSequence = [observer]
    reference = Dataset()
    reference.ReferencedSOPClassUID = ds.SOPClassUID
    reference.ReferencedSOPInstanceUID = identifiers.referenced_uid
    ds.SourceImageSequence = [reference]

    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", identifiers.private_value)

    path_out = Path(path_out)
    path_out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path_out, enforce_file_format=False)


@dataclass(frozen=True)
class DicomFixture:
    """One DICOM file the suite reads; ``group`` and ``relative`` place its planted copy so a
    source root per group keeps the publisher's folder layout (series folders for IBSI)."""

    group: str
    path: Path
    relative: str

    @property
    def test_id(self) -> str:
        return f"{self.group}/{self.relative}"


def demo_dicom_files() -> list[Path]:
    """The package files of the catalog's DICOM demo sources (data/sources/demo_*.yaml)."""
    files: set[Path] = set()
    for spec in load_catalog().values():
        if spec.demo and spec.layout.family == "dicom" and spec.acquisition.method == "package":
            for entry in spec.acquisition.files:
                files.update(p for p in package_folder(entry.package).glob(entry.path) if p.is_file())
    return sorted(files)


# pydicom and pydicom-data files the other tests read (CT, MR, the liver SEG, the RTSTRUCT, the
# colour, large CR and undecodable JPEG cases).
PYDICOM_TEST_FILES = [
    PYDICOM_FILES / "CT_small.dcm",
    PYDICOM_FILES / "MR_small.dcm",
    PYDICOM_FILES / "rtstruct.dcm",
    PYDICOM_FILES / "JPEG-lossy.dcm",
    DATA_STORE / "liver.dcm",
    DATA_STORE / "emri_small.dcm",
    DATA_STORE / "SC_ybr_full_uncompressed.dcm",
    DATA_STORE / "RG3_UNCR.dcm",
]


def realdata_dicom_fixtures() -> list[DicomFixture]:
    """The real DICOM extracts (IBSI STS series with RTSTRUCTs, SIIM CR); empty when absent."""
    realdata = realdata_dir()
    found = []
    ibsi = realdata / "ibsi_sts" / "dicom"
    for path in sorted(ibsi.glob("**/*.dcm")):
        found.append(DicomFixture("ibsi_sts", path, path.relative_to(ibsi).as_posix()))
    for path in sorted((realdata / "cxr_samples").glob("*.dcm")):
        found.append(DicomFixture("cxr_samples", path, path.name))
    return found


def every_dicom_fixture() -> list[DicomFixture]:
    """Every DICOM file the test suite reads, each once (demo files the other tests also use
    are listed under "demo")."""
    fixtures = [DicomFixture("demo", path, path.name) for path in demo_dicom_files()]
    seen = {fixture.path for fixture in fixtures}
    fixtures += [DicomFixture("pydicom", path, path.name) for path in PYDICOM_TEST_FILES if path not in seen]
    return fixtures + realdata_dicom_fixtures()
