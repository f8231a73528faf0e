"""The PHI boundary of ingest: what may leave a DICOM (or NIfTI) read, and a leak detector.

Only pixels and the small allowlist below ever leave ``dicom_io``; everything else in the header
(names, ids, dates, institutions, free text) is never copied into a record, a quarantine reason
or a log. The patient id is read for one purpose: the salted hash in ``sources.base.patient_hash``.

``apply_basic_profile`` de-identifies a whole dataset in place per DICOM PS3.15 Annex E (Basic
Application Level Confidentiality Profile), so a dataset that any later code keeps, logs or
writes carries no identifier either.

Pixels themselves can carry burned-in text (ultrasound and secondary-capture screens often print
the institution or the patient's name). Masking it needs OCR and is a separate, later step;
``has_burned_in_annotation`` reads the header's declaration so a reader can quarantine or flag
such images (a "NO" there is often wrong, and the demo sources were chosen among files without
identifying burned-in text).
"""

from __future__ import annotations

import gzip
import os
import re
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

# Technical, non-identifying attributes that the DICOM PS3.15 Annex E Basic Application Level
# Confidentiality Profile keeps ("K" or not listed): acquisition geometry, pixel encoding and
# rescale/window values. These are the only header values a record may carry (read_header in
# dicom_io builds records from them alone). ``apply_basic_profile`` below
# de-identifies a whole dataset (for any code that handles one); burned-in pixel text is not
# cleaned, only flagged (``has_burned_in_annotation``).
ALLOWED_KEYWORDS: frozenset[str] = frozenset(
    {
        "Modality",
        "BodyPartExamined",
        "PixelSpacing",
        "ImagerPixelSpacing",
        "Rows",
        "Columns",
        "PhotometricInterpretation",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "WindowCenter",
        "WindowWidth",
        "SliceThickness",
        "NumberOfFrames",
        "SamplesPerPixel",
        "BitsStored",
        "PixelRepresentation",
        # Geometry and view: where the pixels lie in the patient (patient-side words come only
        # from these), which projection, which paired part, and whether frames step in time.
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "PatientOrientation",
        "ViewPosition",
        "ImageLaterality",
        "Laterality",
        "FrameIncrementPointer",
        "FrameTime",
    }
)


@dataclass(frozen=True)
class PatientKeyRule:
    """Where a file's patient key comes from (``catalog.spec.PatientRule.key_rule`` gives it)."""

    source: str  # "dicom", "folder", "regex", "file" or "column" (column: resolved by the reader)
    folder_depth: int = 0
    pattern: Optional[str] = None


def patient_identifier(rule: PatientKeyRule, relative_path: str, dicom_patient_id: Optional[str] = None) -> str:
    """The raw patient key of one file, to be hashed at once by ``patient_hash``.

    A missing DICOM PatientID (or a rule that does not match) falls back to the file path:
    each such file is then its own patient, which can only make splits stricter, never leak.
    """
    if rule.source == "dicom" and dicom_patient_id and dicom_patient_id.strip():
        return dicom_patient_id.strip()
    parts = Path(relative_path).parts
    if rule.source == "folder" and len(parts) > rule.folder_depth + 1:
        return parts[rule.folder_depth]
    if rule.source == "regex" and rule.pattern:
        match = re.search(rule.pattern, relative_path)
        if match:
            return match.group(1) if match.groups() else match.group(0)
    return relative_path


def _encodings(identifier: str) -> list[bytes]:
    # DICOM stores names in ASCII/UTF-8/Latin-1; SQLite (Chroma) and some writers use UTF-16LE.
    lowered = identifier.lower()
    forms = {lowered.encode("utf-8"), lowered.encode("utf-16-le")}
    return sorted(forms)


def _files_under(paths: Iterable[Path]) -> Iterable[Path]:
    for path in paths:
        path = Path(path)
        if path.is_file():
            yield path
        elif path.is_dir():
            for folder, _, names in os.walk(path):
                for name in sorted(names):
                    yield Path(folder) / name


def scan_for_identifiers(paths: Iterable[Path], identifiers: Iterable[str], chunk_bytes: int = 1 << 22) -> list[tuple[Path, str]]:
    """Every (file, identifier) where a planted identifier appears in a file's bytes.

    Scans every file under the given folders whatever its format (Parquet, npy, PNG, JSON,
    DuckDB, Chroma's SQLite...), case-insensitively, in UTF-8 and UTF-16LE; gzip files also
    decompressed. Parquet and DuckDB
    may compress pages, so pipeline tests should also check decoded table values; this scan
    catches the uncompressed copies (dictionary pages, logs, SQLite, JSON, sidecars).
    """
    wanted = [(ident, form) for ident in identifiers for form in _encodings(ident)]
    longest = max((len(form) for _, form in wanted), default=1)
    hits: list[tuple[Path, str]] = []
    for file in _files_under(paths):
        found: set[str] = set()
        try:
            with open(file, "rb") as handle:
                _scan_stream(handle, wanted, longest, found, chunk_bytes)
            # gzip members (.nii.gz, .json.gz...) are scanned decompressed as well.
            with open(file, "rb") as handle:
                is_gzip = handle.read(2) == b"\x1f\x8b"
            if is_gzip:
                with gzip.open(file, "rb") as handle:
                    _scan_stream(handle, wanted, longest, found, chunk_bytes)
        except (OSError, EOFError, zlib.error):
            pass  # unreadable or corrupt compressed data: the raw bytes were still scanned
        hits.extend((file, ident) for ident in sorted(found))
    return hits


def _scan_stream(handle, wanted, longest: int, found: set[str], chunk_bytes: int) -> None:
    tail = b""
    while True:
        chunk = handle.read(chunk_bytes)
        if not chunk:
            return
        # Keep the end of the previous chunk so an identifier split across chunks is found.
        window = (tail + chunk).lower()
        for ident, form in wanted:
            if ident not in found and form in window:
                found.add(ident)
        tail = window[-(longest - 1):] if longest > 1 else b""


# --- DICOM PS3.15 Annex E: Basic Application Level Confidentiality Profile -----------------

# Basic Profile actions of DICOM PS3.15 Annex E, Table E.1-1 ("Application Level Confidentiality
# Profile Attributes", Basic Profile column), written as keyword -> action exactly as the table
# states it. D: replace with a dummy value; Z: replace with a zero-length value (or a dummy);
# X: remove; K: keep; C: clean; U: replace the UID with a consistent pseudonymous one. A compound
# action ("X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*") depends on the attribute's Type in the IOD;
# ``_resolve`` picks one.
# Checked entry by entry against the 2026c edition of the table as transcribed by
# dicom-anonymizer 2.1.0 (KitwareMedical/dicom-anonymizer,
# dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py), and cross-checked with that
# package's 2024b transcription and with idiscore 1.2.0 (idiscore/_public_dicom.py, scraped from
# the NEMA "current" edition on 2024-09-19): the three agree on every attribute they share. Every
# attribute of the table that pydicom names is here, retired ones included, sorted by keyword
# with its tag. Not here, all X in the table: curves (50xx,xxxx), overlay data and comments
# (60xx,3000) (60xx,4000) and private attributes, removed by the generic rules of
# ``_deidentify``; and 25 attributes added by recent editions that pydicom 3.0.2 does not name,
# so an element cannot be matched to them by keyword: (0008,1301)-(0008,1304),
# (0010,0011)-(0010,0016), (0010,0041)-(0010,0047), (0010,2162), (0040,A034), (0040,A035),
# (0040,B034), (0040,B036), (0040,B03B), (0040,B03F), (0040,E012): ``UNNAMED_PROFILE_TAGS``
# removes them by tag number. Attributes not listed are kept by the profile (besides the generic rules in
# ``apply_basic_profile``: private tags, curves, overlays, person names and instance UIDs).
# The attributes of the table that pydicom 3.0.2 does not name (listed above), matched by tag
# number instead; the table removes them all (X).
UNNAMED_PROFILE_TAGS: frozenset[int] = frozenset(
    [Tag(0x0008, element) for element in range(0x1301, 0x1305)]
    + [Tag(0x0010, element) for element in range(0x0011, 0x0017)]
    + [Tag(0x0010, element) for element in range(0x0041, 0x0048)]
    + [Tag(0x0010, 0x2162)]
    + [Tag(0x0040, element) for element in (0xA034, 0xA035, 0xB034, 0xB036, 0xB03B, 0xB03F, 0xE012)]
)

BASIC_PROFILE_ACTIONS: dict[str, str] = {
    "AccessionNumber": "Z",  # (0008,0050)
    "AcquisitionComments": "X",  # (0018,4000) retired
    "AcquisitionContextDescription": "X",  # (0040,0556)
    "AcquisitionContextSequence": "X/Z",  # (0040,0555)
    "AcquisitionDate": "X/Z",  # (0008,0022)
    "AcquisitionDateTime": "X/Z/D",  # (0008,002A)
    "AcquisitionDeviceProcessingDescription": "X/D",  # (0018,1400)
    "AcquisitionFieldOfViewLabel": "D",  # (0018,11BB)
    "AcquisitionProtocolDescription": "X",  # (0018,9424)
    "AcquisitionTime": "X/Z",  # (0008,0032)
    "AcquisitionUID": "U",  # (0008,0017)
    "ActualHumanPerformersSequence": "X",  # (0040,4035)
    "AdditionalPatientHistory": "X",  # (0010,21B0)
    "AddressTrial": "X",  # (0040,A353) retired
    "AdmissionID": "X",  # (0038,0010)
    "AdmittingDate": "X",  # (0038,0020)
    "AdmittingDiagnosesCodeSequence": "X",  # (0008,1084)
    "AdmittingDiagnosesDescription": "X",  # (0008,1080)
    "AdmittingTime": "X",  # (0038,0021)
    "AffectedSOPInstanceUID": "X",  # (0000,1000)
    "Allergies": "X",  # (0010,2110)
    "AnnotationGroupDescription": "X",  # (006A,0006)
    "AnnotationGroupLabel": "D",  # (006A,0005)
    "AnnotationGroupUID": "D",  # (006A,0003)
    "ApprovalStatusDateTime": "X",  # (0044,0004)
    "Arbitrary": "X",  # (4000,0010) retired
    "AssertionDateTime": "D",  # (0044,0104)
    "AssertionExpirationDateTime": "X",  # (0044,0105)
    "AttributeModificationDateTime": "D",  # (0400,0562)
    "AuthorObserverSequence": "X",  # (0040,A078)
    "BarcodeValue": "X/Z",  # (2200,0005)
    "BeamDescription": "X",  # (300A,00C3)
    "BeamHoldTransitionDateTime": "D",  # (300C,0127)
    "BolusDescription": "X",  # (300A,00DD)
    "BranchOfService": "X",  # (0010,1081)
    "CalibrationDate": "X",  # (0014,407E)
    "CalibrationDateTime": "Z",  # (0018,1203)
    "CalibrationTime": "X",  # (0014,407C)
    "CameraOwnerName": "X",  # (0016,004D)
    "CassetteID": "X",  # (0018,1007)
    "CertificateOfSigner": "D",  # (0400,0115)
    "CertifiedTimestamp": "X",  # (0400,0310)
    "ChannelDerivationDescription": "X",  # (003A,020C)
    "ChannelLabel": "X",  # (003A,0203)
    "ClinicalTrialCoordinatingCenterName": "Z",  # (0012,0060)
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber": "X",  # (0012,0082)
    "ClinicalTrialProtocolEthicsCommitteeName": "D",  # (0012,0081)
    "ClinicalTrialProtocolID": "D",  # (0012,0020)
    "ClinicalTrialProtocolName": "Z",  # (0012,0021)
    "ClinicalTrialSeriesDescription": "X",  # (0012,0072)
    "ClinicalTrialSeriesID": "X",  # (0012,0071)
    "ClinicalTrialSiteID": "Z",  # (0012,0030)
    "ClinicalTrialSiteName": "Z",  # (0012,0031)
    "ClinicalTrialSponsorName": "D",  # (0012,0010)
    "ClinicalTrialSubjectID": "D",  # (0012,0040)
    "ClinicalTrialSubjectReadingID": "D",  # (0012,0042)
    "ClinicalTrialTimePointDescription": "X",  # (0012,0051)
    "ClinicalTrialTimePointID": "Z",  # (0012,0050)
    "CommentsOnRadiationDose": "X",  # (0040,0310)
    "CommentsOnThePerformedProcedureStep": "X",  # (0040,0280)
    "CompensatorDescription": "X",  # (300A,02EB)
    "ConcatenationUID": "U",  # (0020,9161)
    "ConceptualVolumeCombinationDescription": "Z",  # (3010,000F)
    "ConceptualVolumeDescription": "Z",  # (3010,0017)
    "ConceptualVolumeUID": "U",  # (3010,0006)
    "ConfidentialityConstraintOnPatientDataDescription": "X",  # (0040,3001)
    "ConstituentConceptualVolumeUID": "U",  # (3010,0013)
    "ConsultingPhysicianIdentificationSequence": "X",  # (0008,009D)
    "ConsultingPhysicianName": "Z",  # (0008,009C)
    "ContainerComponentID": "X",  # (0050,001B)
    "ContainerDescription": "X",  # (0040,051A)
    "ContainerIdentifier": "D",  # (0040,0512)
    "ContentCreatorIdentificationCodeSequence": "X",  # (0070,0086)
    "ContentCreatorName": "Z/D",  # (0070,0084)
    "ContentDate": "Z/D",  # (0008,0023)
    "ContentSequence": "D",  # (0040,A730)
    "ContentTime": "Z/D",  # (0008,0033)
    "ContextGroupLocalVersion": "D",  # (0008,0107)
    "ContextGroupVersion": "D",  # (0008,0106)
    "ContrastBolusAgent": "Z/D",  # (0018,0010)
    "ContrastBolusStartTime": "X",  # (0018,1042)
    "ContrastBolusStopTime": "X",  # (0018,1043)
    "ContributionDateTime": "X",  # (0018,A002)
    "ContributionDescription": "X",  # (0018,A003)
    "CountryOfResidence": "X",  # (0010,2150)
    "CreationDate": "X",  # (2100,0040)
    "CreationTime": "X",  # (2100,0050)
    "CurrentObserverTrial": "X",  # (0040,A307) retired
    "CurrentPatientLocation": "X",  # (0038,0300)
    "CurveDate": "X",  # (0008,0025) retired
    "CurveTime": "X",  # (0008,0035) retired
    "CustodialOrganizationSequence": "X",  # (0040,A07C)
    "DataSetTrailingPadding": "X",  # (FFFC,FFFC)
    "Date": "D",  # (0040,A121)
    "DateOfDocumentOrVerbalTransactionTrial": "X",  # (0040,A110) retired
    "DateOfInstallation": "X",  # (0018,1205)
    "DateOfLastCalibration": "X",  # (0018,1200)
    "DateOfLastDetectorCalibration": "X/D",  # (0018,700C)
    "DateOfManufacture": "X",  # (0018,1204)
    "DateOfSecondaryCapture": "X",  # (0018,1012)
    "DateTime": "D",  # (0040,A120)
    "DateTimeOfLastCalibration": "X",  # (0018,1202)
    "DecayCorrectionDateTime": "D",  # (0018,9701)
    "DecompositionDescription": "X",  # (0018,937F)
    "DerivationDescription": "X",  # (0008,2111)
    "DestinationAE": "D",  # (2100,0140)
    "DetectorID": "X/D",  # (0018,700A)
    "DeviceAlternateIdentifier": "Z",  # (3010,001B)
    "DeviceDescription": "X",  # (0050,0020)
    "DeviceLabel": "D",  # (3010,002D)
    "DeviceSerialNumber": "X/Z/D",  # (0018,1000)
    "DeviceSettingDescription": "X",  # (0016,004B)
    "DeviceUID": "U",  # (0018,1002)
    "DigitalSignatureDateTime": "D",  # (0400,0105)
    "DigitalSignaturesSequence": "X",  # (FFFA,FFFA)
    "DigitalSignatureUID": "U",  # (0400,0100)
    "DimensionOrganizationUID": "U",  # (0020,9164)
    "DischargeDate": "X",  # (0038,0030) retired
    "DischargeDiagnosisDescription": "X",  # (0038,0040) retired
    "DischargeTime": "X",  # (0038,0032) retired
    "DisplacementReferenceLabel": "X",  # (300A,079A)
    "DistributionAddress": "X",  # (4008,011A) retired
    "DistributionName": "X",  # (4008,0119) retired
    "DoseReferenceDescription": "X",  # (300A,0016)
    "DoseReferenceUID": "U",  # (300A,0013)
    "DosimetricObjectiveUID": "U",  # (3010,006E)
    "EffectiveDateTime": "D",  # (0068,6226)
    "EncapsulatedDocument": "D",  # (0042,0011)
    "EndAcquisitionDateTime": "X/D",  # (0018,9517)
    "EntityDescription": "X",  # (3010,0037)
    "EntityLabel": "D",  # (3010,0035)
    "EntityLongLabel": "D",  # (3010,0038)
    "EntityName": "X",  # (3010,0036)
    "EquipmentFrameOfReferenceDescription": "X",  # (300A,0676)
    "EthicsCommitteeApprovalEffectivenessEndDate": "X",  # (0012,0087)
    "EthicsCommitteeApprovalEffectivenessStartDate": "X",  # (0012,0086)
    "EthnicGroup": "X",  # (0010,2160)
    "EthnicGroupCodeSequence": "X",  # (0010,2161)
    "ExclusionStartDateTime": "D",  # (0018,9804)
    "ExpectedCompletionDateTime": "X",  # (0040,4011)
    "FailedSOPInstanceUIDList": "U",  # (0008,0058)
    "FiducialUID": "U",  # (0070,031A)
    "FillerOrderNumberImagingServiceRequest": "Z",  # (0040,2017)
    "FilterLookupTableDescription": "X",  # (003A,032B)
    "FindingsGroupRecordingDateTrial": "X",  # (0040,A023) retired
    "FindingsGroupRecordingTimeTrial": "X",  # (0040,A024) retired
    "FirstTreatmentDate": "X/D",  # (3008,0054)
    "FixationDeviceDescription": "X",  # (300A,0196)
    "FlowIdentifier": "D",  # (0034,0002)
    "FlowIdentifierSequence": "D",  # (0034,0001)
    "FractionationNotes": "Z",  # (3010,007F)
    "FractionGroupDescription": "X",  # (300A,0072)
    "FrameAcquisitionDateTime": "D",  # (0018,9074)
    "FrameComments": "X",  # (0020,9158)
    "FrameOfReferenceUID": "U",  # (0020,0052)
    "FrameOriginTimestamp": "D",  # (0034,0007)
    "FrameReferenceDateTime": "D",  # (0018,9151)
    "FunctionalSyncPulse": "D",  # (0018,9623)
    "GantryID": "X",  # (0018,1008)
    "GeneratorID": "X",  # (0018,1005)
    "GPSAltitude": "X",  # (0016,0076)
    "GPSAltitudeRef": "X",  # (0016,0075)
    "GPSAreaInformation": "X",  # (0016,008C)
    "GPSDateStamp": "X",  # (0016,008D)
    "GPSDestBearing": "X",  # (0016,0088)
    "GPSDestBearingRef": "X",  # (0016,0087)
    "GPSDestDistance": "X",  # (0016,008A)
    "GPSDestDistanceRef": "X",  # (0016,0089)
    "GPSDestLatitude": "X",  # (0016,0084)
    "GPSDestLatitudeRef": "X",  # (0016,0083)
    "GPSDestLongitude": "X",  # (0016,0086)
    "GPSDestLongitudeRef": "X",  # (0016,0085)
    "GPSDifferential": "X",  # (0016,008E)
    "GPSDOP": "X",  # (0016,007B)
    "GPSImgDirection": "X",  # (0016,0081)
    "GPSImgDirectionRef": "X",  # (0016,0080)
    "GPSLatitude": "X",  # (0016,0072)
    "GPSLatitudeRef": "X",  # (0016,0071)
    "GPSLongitude": "X",  # (0016,0074)
    "GPSLongitudeRef": "X",  # (0016,0073)
    "GPSMapDatum": "X",  # (0016,0082)
    "GPSMeasureMode": "X",  # (0016,007A)
    "GPSProcessingMethod": "X",  # (0016,008B)
    "GPSSatellites": "X",  # (0016,0078)
    "GPSSpeed": "X",  # (0016,007D)
    "GPSSpeedRef": "X",  # (0016,007C)
    "GPSStatus": "X",  # (0016,0079)
    "GPSTimeStamp": "X",  # (0016,0077)
    "GPSTrack": "X",  # (0016,007F)
    "GPSTrackRef": "X",  # (0016,007E)
    "GPSVersionID": "X",  # (0016,0070)
    "GraphicAnnotationSequence": "D",  # (0070,0001)
    "HangingProtocolCreationDateTime": "D",  # (0072,000A)
    "HardcopyCreationDeviceID": "X",  # (0018,1011) retired
    "HL7DocumentEffectiveTime": "X",  # (0040,E004)
    "HumanPerformerName": "X",  # (0040,4037)
    "HumanPerformerOrganization": "X",  # (0040,4036)
    "IconImageSequence": "X",  # (0088,0200)
    "IdentifyingComments": "X",  # (0008,4000) retired
    "ImageComments": "X",  # (0020,4000)
    "ImagePresentationComments": "X",  # (0028,4000) retired
    "ImagingServiceRequestComments": "X",  # (0040,2400)
    "ImpedanceMeasurementDateTime": "D",  # (003A,0314)
    "Impressions": "X",  # (4008,0300) retired
    "InformationIssueDateTime": "D",  # (0068,6270)
    "InstanceCoercionDateTime": "X",  # (0008,0015)
    "InstanceCreationDate": "X/D",  # (0008,0012)
    "InstanceCreationTime": "X/Z/D",  # (0008,0013)
    "InstanceCreatorUID": "U",  # (0008,0014)
    "InstanceOriginStatus": "X",  # (0400,0600)
    "InstitutionAddress": "X",  # (0008,0081)
    "InstitutionalDepartmentName": "X",  # (0008,1040)
    "InstitutionalDepartmentTypeCodeSequence": "X",  # (0008,1041)
    "InstitutionCodeSequence": "X/Z/D",  # (0008,0082)
    "InstitutionName": "X/Z/D",  # (0008,0080)
    "InstructionPerformedDateTime": "Z/D",  # (0018,9919)
    "InsurancePlanIdentification": "X",  # (0010,1050) retired
    "IntendedFractionStartTime": "X",  # (3010,0085)
    "IntendedPhaseEndDate": "X/D",  # (3010,004D)
    "IntendedPhaseStartDate": "X/D",  # (3010,004C)
    "IntendedRecipientsOfResultsIdentificationSequence": "X",  # (0040,1011)
    "InterlockDateTime": "D",  # (300A,0741)
    "InterlockDescription": "D",  # (300A,0742)
    "InterlockOriginDescription": "D",  # (300A,0783)
    "InterpretationApprovalDate": "X",  # (4008,0112) retired
    "InterpretationApprovalTime": "X",  # (4008,0113) retired
    "InterpretationApproverSequence": "X",  # (4008,0111) retired
    "InterpretationAuthor": "X",  # (4008,010C) retired
    "InterpretationDiagnosisDescription": "X",  # (4008,0115) retired
    "InterpretationID": "X",  # (4008,0200) retired
    "InterpretationIDIssuer": "X",  # (4008,0202) retired
    "InterpretationRecordedDate": "X",  # (4008,0100) retired
    "InterpretationRecordedTime": "X",  # (4008,0101) retired
    "InterpretationRecorder": "X",  # (4008,0102) retired
    "InterpretationText": "X",  # (4008,010B) retired
    "InterpretationTranscriber": "X",  # (4008,010A) retired
    "InterpretationTranscriptionDate": "X",  # (4008,0108) retired
    "InterpretationTranscriptionTime": "X",  # (4008,0109) retired
    "InterventionDrugStartTime": "X",  # (0018,0035)
    "InterventionDrugStopTime": "X",  # (0018,0027)
    "IrradiationEventUID": "U",  # (0008,3010)
    "IssueDateOfImagingServiceRequest": "X",  # (0040,2004)
    "IssuerOfAdmissionID": "X",  # (0038,0011) retired
    "IssuerOfAdmissionIDSequence": "X",  # (0038,0014)
    "IssuerOfClinicalTrialProtocolID": "X",  # (0012,0022)
    "IssuerOfClinicalTrialSeriesID": "X",  # (0012,0073)
    "IssuerOfClinicalTrialSiteID": "X",  # (0012,0032)
    "IssuerOfClinicalTrialSubjectID": "X",  # (0012,0041)
    "IssuerOfClinicalTrialSubjectReadingID": "X",  # (0012,0043)
    "IssuerOfClinicalTrialTimePointID": "X",  # (0012,0055)
    "IssuerOfPatientID": "X",  # (0010,0021)
    "IssuerOfServiceEpisodeID": "X",  # (0038,0061) retired
    "IssuerOfServiceEpisodeIDSequence": "X",  # (0038,0064)
    "IssuerOfTheContainerIdentifierSequence": "Z",  # (0040,0513)
    "IssuerOfTheSpecimenIdentifierSequence": "Z",  # (0040,0562)
    "IssueTimeOfImagingServiceRequest": "X",  # (0040,2005)
    "LabelText": "X/Z",  # (2200,0002)
    "LargePaletteColorLookupTableUID": "U",  # (0028,1214) retired
    "LastMenstrualDate": "X",  # (0010,21D0)
    "LensMake": "X",  # (0016,004F)
    "LensModel": "X",  # (0016,0050)
    "LensSerialNumber": "X",  # (0016,0051)
    "LensSpecification": "X",  # (0016,004E)
    "LongDeviceDescription": "X",  # (0050,0021)
    "MAC": "X",  # (0400,0404)
    "MakerNote": "X",  # (0016,002B)
    "ManufacturerDeviceClassUID": "U",  # (0018,100B)
    "ManufacturerDeviceIdentifier": "Z",  # (3010,0043)
    "MediaStorageSOPInstanceUID": "U",  # (0002,0003)
    "MedicalAlerts": "X",  # (0010,2000)
    "MedicalRecordLocator": "X",  # (0010,1090) retired
    "MilitaryRank": "X",  # (0010,1080)
    "ModifiedAttributesSequence": "X",  # (0400,0550)
    "ModifiedImageDate": "X",  # (0020,3403) retired
    "ModifiedImageDescription": "X",  # (0020,3406) retired
    "ModifiedImageTime": "X",  # (0020,3405) retired
    "ModifyingDeviceID": "X",  # (0020,3401) retired
    "ModifyingSystem": "D",  # (0400,0563)
    "MostRecentTreatmentDate": "X/D",  # (3008,0056)
    "MultienergyAcquisitionDescription": "X",  # (0018,937B)
    "MultiplexGroupLabel": "X",  # (003A,0020)
    "MultiplexGroupUID": "U",  # (003A,0310)
    "NameOfPhysiciansReadingStudy": "X",  # (0008,1060)
    "NamesOfIntendedRecipientsOfResults": "X",  # (0040,1010)
    "NetworkID": "X",  # (0008,1000) retired
    "NonconformingDataElementValue": "X",  # (0400,0552)
    "NonconformingModifiedAttributesSequence": "X",  # (0400,0551)
    "ObservationDateTime": "X/D",  # (0040,A032)
    "ObservationDateTrial": "X",  # (0040,A192) retired
    "ObservationStartDateTime": "X",  # (0040,A033)
    "ObservationSubjectUIDTrial": "U",  # (0040,A402) retired
    "ObservationTimeTrial": "X",  # (0040,A193) retired
    "ObservationUID": "U",  # (0040,A171)
    "Occupation": "X",  # (0010,2180)
    "OperatorIdentificationSequence": "X/D",  # (0008,1072)
    "OperatorsName": "X/Z/D",  # (0008,1070)
    "OrderCallbackPhoneNumber": "X",  # (0040,2010)
    "OrderCallbackTelecomInformation": "X",  # (0040,2011)
    "OrderEnteredBy": "X",  # (0040,2008)
    "OrderEntererLocation": "X",  # (0040,2009)
    "OriginalAttributesSequence": "X",  # (0400,0561)
    "Originator": "X",  # (2100,0070)
    "OtherClinicalTrialProtocolIDsSequence": "X",  # (0012,0023)
    "OtherPatientIDs": "X",  # (0010,1000) retired
    "OtherPatientIDsSequence": "X",  # (0010,1002)
    "OtherPatientNames": "X",  # (0010,1001)
    "OverlayDate": "X",  # (0008,0024) retired
    "OverlayTime": "X",  # (0008,0034) retired
    "OverrideDateTime": "D",  # (300A,0760)
    "PaletteColorLookupTableUID": "U",  # (0028,1199)
    "ParticipantSequence": "X",  # (0040,A07A)
    "ParticipationDateTime": "Z",  # (0040,A082)
    "PatientAddress": "X",  # (0010,1040)
    "PatientAge": "X",  # (0010,1010)
    "PatientBirthDate": "Z",  # (0010,0030)
    "PatientBirthName": "X",  # (0010,1005)
    "PatientBirthTime": "X",  # (0010,0032)
    "PatientComments": "X",  # (0010,4000)
    "PatientID": "Z/D",  # (0010,0020)
    "PatientInstitutionResidence": "X",  # (0038,0400)
    "PatientInsurancePlanCodeSequence": "X",  # (0010,0050)
    "PatientMotherBirthName": "X",  # (0010,1060)
    "PatientName": "Z",  # (0010,0010)
    "PatientPrimaryLanguageCodeSequence": "X",  # (0010,0101)
    "PatientPrimaryLanguageModifierCodeSequence": "X",  # (0010,0102)
    "PatientReligiousPreference": "X",  # (0010,21F0)
    "PatientSetupPhotoDescription": "X",  # (300A,0794)
    "PatientSetupUID": "U",  # (300A,0650) retired
    "PatientSex": "Z",  # (0010,0040)
    "PatientSexNeutered": "X/Z",  # (0010,2203)
    "PatientSize": "X",  # (0010,1020)
    "PatientState": "X",  # (0038,0500)
    "PatientTelecomInformation": "X",  # (0010,2155)
    "PatientTelephoneNumbers": "X",  # (0010,2154)
    "PatientTransportArrangements": "X",  # (0040,1004)
    "PatientTreatmentPreparationMethodDescription": "X",  # (300A,0792)
    "PatientTreatmentPreparationProcedureParameterDescription": "X",  # (300A,078E)
    "PatientWeight": "X",  # (0010,1030)
    "PerformedLocation": "X",  # (0040,0243)
    "PerformedProcedureStepDescription": "X",  # (0040,0254)
    "PerformedProcedureStepEndDate": "X",  # (0040,0250)
    "PerformedProcedureStepEndDateTime": "X",  # (0040,4051)
    "PerformedProcedureStepEndTime": "X",  # (0040,0251)
    "PerformedProcedureStepID": "X",  # (0040,0253)
    "PerformedProcedureStepStartDate": "X",  # (0040,0244)
    "PerformedProcedureStepStartDateTime": "X",  # (0040,4050)
    "PerformedProcedureStepStartTime": "X",  # (0040,0245)
    "PerformedStationAETitle": "X",  # (0040,0241)
    "PerformedStationGeographicLocationCodeSequence": "X",  # (0040,4030)
    "PerformedStationName": "X",  # (0040,0242)
    "PerformedStationNameCodeSequence": "X",  # (0040,4028)
    "PerformingPhysicianIdentificationSequence": "X",  # (0008,1052)
    "PerformingPhysicianName": "X",  # (0008,1050)
    "PersonAddress": "X",  # (0040,1102)
    "PersonIdentificationCodeSequence": "D",  # (0040,1101)
    "PersonName": "D",  # (0040,A123)
    "PersonTelecomInformation": "X",  # (0040,1104)
    "PersonTelephoneNumbers": "X",  # (0040,1103)
    "PhysicianApprovingInterpretation": "X",  # (4008,0114) retired
    "PhysiciansOfRecord": "X",  # (0008,1048)
    "PhysiciansOfRecordIdentificationSequence": "X",  # (0008,1049)
    "PhysiciansReadingStudyIdentificationSequence": "X",  # (0008,1062)
    "PlacerOrderNumberImagingServiceRequest": "Z",  # (0040,2016)
    "PlateID": "X",  # (0018,1004)
    "PositionAcquisitionTemplateDescription": "X",  # (3002,0123)
    "PositionAcquisitionTemplateName": "X",  # (3002,0121)
    "PregnancyStatus": "X",  # (0010,21C0)
    "PreMedication": "X",  # (0040,0012)
    "PrescriptionDescription": "X",  # (300A,000E)
    "PrescriptionNotes": "Z",  # (3010,007B)
    "PrescriptionNotesSequence": "Z",  # (3010,0081)
    "PresentationCreationDate": "X",  # (0070,0082)
    "PresentationCreationTime": "X",  # (0070,0083)
    "PresentationDisplayCollectionUID": "U",  # (0070,1101)
    "PresentationSequenceCollectionUID": "U",  # (0070,1102)
    "PriorTreatmentDoseDescription": "X",  # (3010,0061)
    "ProcedureStepCancellationDateTime": "X",  # (0040,4052)
    "ProductExpirationDateTime": "X",  # (0044,000B)
    "ProtocolName": "X/D",  # (0018,1030)
    "PyramidDescription": "X",  # (0008,1088)
    "PyramidLabel": "X",  # (0020,0027)
    "PyramidUID": "U",  # (0008,0019)
    "RadiationDoseIdentificationLabel": "D",  # (300A,0619)
    "RadiationDoseInVivoMeasurementLabel": "D",  # (300A,0623)
    "RadiationGenerationModeDescription": "Z",  # (300A,067D)
    "RadiationGenerationModeLabel": "D",  # (300A,067C)
    "RadiopharmaceuticalStartDateTime": "X",  # (0018,1078)
    "RadiopharmaceuticalStartTime": "X",  # (0018,1072)
    "RadiopharmaceuticalStopDateTime": "X",  # (0018,1079)
    "RadiopharmaceuticalStopTime": "X",  # (0018,1073)
    "ReasonForOmissionDescription": "X",  # (300C,0113)
    "ReasonForRequestedProcedureCodeSequence": "X",  # (0040,100A)
    "ReasonForStudy": "X",  # (0032,1030) retired
    "ReasonForSuperseding": "Z",  # (3010,005C)
    "ReasonForTheAttributeModification": "D",  # (0400,0565)
    "ReasonForTheImagingServiceRequest": "X",  # (0040,2001) retired
    "ReasonForTheRequestedProcedure": "X",  # (0040,1002)
    "ReasonForVisit": "X",  # (0032,1066)
    "ReasonForVisitCodeSequence": "X",  # (0032,1067)
    "ReceivingAE": "X",  # (0074,1234)
    "RecordedRTControlPointDateTime": "D",  # (300A,073A)
    "ReferencedConceptualVolumeUID": "U",  # (3010,000B)
    "ReferencedDateTime": "D",  # (0040,A13A)
    "ReferencedDigitalSignatureSequence": "X",  # (0400,0402)
    "ReferencedDoseReferenceUID": "U",  # (300A,0083)
    "ReferencedDosimetricObjectiveUID": "U",  # (3010,006F)
    "ReferencedFiducialsUID": "U",  # (3010,0031)
    "ReferencedFrameOfReferenceUID": "U",  # (3006,0024)
    "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID": "U",  # (0040,4023) retired
    "ReferencedImageSequence": "X/Z/U*",  # (0008,1140)
    "ReferencedObservationUIDTrial": "U",  # (0040,A172) retired
    "ReferencedPatientAliasSequence": "X",  # (0038,0004) retired
    "ReferencedPatientPhotoSequence": "X",  # (0010,1100)
    "ReferencedPatientSequence": "X",  # (0008,1120)
    "ReferencedPerformedProcedureStepSequence": "X/Z/D",  # (0008,1111)
    "ReferencedSOPInstanceMACSequence": "X",  # (0400,0403)
    "ReferencedSOPInstanceUID": "U",  # (0008,1155)
    "ReferencedSOPInstanceUIDInFile": "U",  # (0004,1511)
    "ReferencedStudySequence": "X/Z",  # (0008,1110)
    "ReferencedTreatmentPositionGroupUID": "U",  # (300A,0785)
    "ReferringPhysicianAddress": "X",  # (0008,0092)
    "ReferringPhysicianIdentificationSequence": "X",  # (0008,0096)
    "ReferringPhysicianName": "Z",  # (0008,0090)
    "ReferringPhysicianTelephoneNumbers": "X",  # (0008,0094)
    "RegionOfResidence": "X",  # (0010,2152)
    "RelatedFrameOfReferenceUID": "U",  # (3006,00C2) retired
    "RequestAttributesSequence": "X",  # (0040,0275)
    "RequestedContrastAgent": "X",  # (0032,1070)
    "RequestedProcedureComments": "X",  # (0040,1400)
    "RequestedProcedureDescription": "X/Z",  # (0032,1060)
    "RequestedProcedureID": "X",  # (0040,1001)
    "RequestedProcedureLocation": "X",  # (0040,1005)
    "RequestedSeriesDescription": "X",  # (0018,9937)
    "RequestedSOPInstanceUID": "U",  # (0000,1001)
    "RequestingAE": "X",  # (0074,1236)
    "RequestingPhysician": "X",  # (0032,1032)
    "RequestingService": "X",  # (0032,1033)
    "RespiratoryMotionCompensationTechniqueDescription": "X",  # (0018,9185)
    "ResponsibleOrganization": "X",  # (0010,2299)
    "ResponsiblePerson": "X",  # (0010,2297)
    "ResultsComments": "X",  # (4008,4000) retired
    "ResultsDistributionListSequence": "X",  # (4008,0118) retired
    "ResultsID": "X",  # (4008,0040) retired
    "ResultsIDIssuer": "X",  # (4008,0042) retired
    "RetrieveAETitle": "X",  # (0008,0054)
    "ReviewDate": "Z",  # (300E,0004)
    "ReviewerName": "X/Z",  # (300E,0008)
    "ReviewTime": "Z",  # (300E,0005)
    "ROICreatorSequence": "X",  # (3006,004D)
    "ROIDateTime": "X",  # (3006,002D)
    "ROIDescription": "X",  # (3006,0028)
    "ROIGenerationDescription": "X",  # (3006,0038)
    "ROIInterpreter": "Z",  # (3006,00A6)
    "ROIInterpreterSequence": "X",  # (3006,004E)
    "ROIName": "Z",  # (3006,0026)
    "ROIObservationDateTime": "X",  # (3006,002E)
    "ROIObservationDescription": "X",  # (3006,0088) retired
    "ROIObservationLabel": "X",  # (3006,0085) retired
    "RTAccessoryDeviceSlotID": "Z",  # (300A,0615)
    "RTAccessoryHolderSlotID": "Z",  # (300A,0611)
    "RTPhysicianIntentNarrative": "Z",  # (3010,005A)
    "RTPlanDate": "X/D",  # (300A,0006)
    "RTPlanDescription": "X",  # (300A,0004)
    "RTPlanLabel": "D",  # (300A,0002)
    "RTPlanName": "X",  # (300A,0003)
    "RTPlanTime": "X/D",  # (300A,0007)
    "RTPrescriptionLabel": "D",  # (3010,0054)
    "RTToleranceSetLabel": "D",  # (300A,062A)
    "RTTreatmentApproachLabel": "X/D",  # (3010,0056)
    "RTTreatmentPhaseUID": "U",  # (3010,003B)
    "SafePositionExitDate": "D",  # (3008,0162)
    "SafePositionExitTime": "D",  # (3008,0164)
    "SafePositionReturnDate": "D",  # (3008,0166)
    "SafePositionReturnTime": "D",  # (3008,0168)
    "ScheduledAdmissionDate": "X",  # (0038,001A) retired
    "ScheduledAdmissionTime": "X",  # (0038,001B) retired
    "ScheduledDischargeDate": "X",  # (0038,001C) retired
    "ScheduledDischargeTime": "X",  # (0038,001D) retired
    "ScheduledHumanPerformersSequence": "X",  # (0040,4034)
    "ScheduledPatientInstitutionResidence": "X",  # (0038,001E) retired
    "ScheduledPerformingPhysicianIdentificationSequence": "X",  # (0040,000B)
    "ScheduledPerformingPhysicianName": "X",  # (0040,0006)
    "ScheduledProcedureStepDescription": "X",  # (0040,0007)
    "ScheduledProcedureStepEndDate": "X",  # (0040,0004)
    "ScheduledProcedureStepEndTime": "X",  # (0040,0005)
    "ScheduledProcedureStepExpirationDateTime": "X",  # (0040,4008)
    "ScheduledProcedureStepID": "X",  # (0040,0009)
    "ScheduledProcedureStepLocation": "X",  # (0040,0011)
    "ScheduledProcedureStepModificationDateTime": "X",  # (0040,4010)
    "ScheduledProcedureStepStartDate": "X",  # (0040,0002)
    "ScheduledProcedureStepStartDateTime": "X",  # (0040,4005)
    "ScheduledProcedureStepStartTime": "X",  # (0040,0003)
    "ScheduledStationAETitle": "X",  # (0040,0001)
    "ScheduledStationGeographicLocationCodeSequence": "X",  # (0040,4027)
    "ScheduledStationName": "X",  # (0040,0010)
    "ScheduledStationNameCodeSequence": "X",  # (0040,4025)
    "ScheduledStudyLocation": "X",  # (0032,1020) retired
    "ScheduledStudyLocationAETitle": "X",  # (0032,1021) retired
    "ScheduledStudyStartDate": "X",  # (0032,1000) retired
    "ScheduledStudyStartTime": "X",  # (0032,1001) retired
    "ScheduledStudyStopDate": "X",  # (0032,1010) retired
    "ScheduledStudyStopTime": "X",  # (0032,1011) retired
    "SecondaryCaptureDeviceID": "X",  # (0018,1010)
    "SelectorAEValue": "D",  # (0072,005E)
    "SelectorASValue": "D",  # (0072,005F)
    "SelectorDAValue": "D",  # (0072,0061)
    "SelectorDTValue": "D",  # (0072,0063)
    "SelectorLOValue": "D",  # (0072,0066)
    "SelectorLTValue": "D",  # (0072,0068)
    "SelectorOBValue": "D",  # (0072,0065)
    "SelectorPNValue": "D",  # (0072,006A)
    "SelectorSHValue": "D",  # (0072,006C)
    "SelectorSTValue": "D",  # (0072,006E)
    "SelectorTMValue": "D",  # (0072,006B)
    "SelectorUNValue": "D",  # (0072,006D)
    "SelectorURValue": "D",  # (0072,0071)
    "SelectorUTValue": "D",  # (0072,0070)
    "SeriesDate": "X/D",  # (0008,0021)
    "SeriesDescription": "X",  # (0008,103E)
    "SeriesInstanceUID": "U",  # (0020,000E)
    "SeriesTime": "X/D",  # (0008,0031)
    "ServiceEpisodeDescription": "X",  # (0038,0062)
    "ServiceEpisodeID": "X",  # (0038,0060)
    "SetupTechniqueDescription": "X",  # (300A,01B2)
    "ShieldingDeviceDescription": "X",  # (300A,01A6)
    "SlideIdentifier": "X",  # (0040,06FA) retired
    "SmokingStatus": "X",  # (0010,21A0)
    "SOPAuthorizationDateTime": "X",  # (0100,0420)
    "SOPInstanceUID": "U",  # (0008,0018)
    "SourceConceptualVolumeUID": "U",  # (3010,0015)
    "SourceEndDateTime": "D",  # (0018,936A)
    "SourceFrameOfReferenceUID": "U",  # (0064,0003)
    "SourceIdentifier": "D",  # (0034,0005)
    "SourceImageSequence": "X/Z/U*",  # (0008,2112)
    "SourceManufacturer": "X",  # (300A,0216)
    "SourceOfPreviousValues": "Z",  # (0400,0564)
    "SourceSerialNumber": "X/Z",  # (3008,0105)
    "SourceStartDateTime": "D",  # (0018,9369)
    "SourceStrengthReferenceDate": "D",  # (300A,022C)
    "SourceStrengthReferenceTime": "D",  # (300A,022E)
    "SpecialNeeds": "X",  # (0038,0050)
    "SpecimenAccessionNumber": "X",  # (0040,050A) retired
    "SpecimenDetailedDescription": "X",  # (0040,0602)
    "SpecimenIdentifier": "D",  # (0040,0551)
    "SpecimenPreparationSequence": "Z",  # (0040,0610)
    "SpecimenShortDescription": "X",  # (0040,0600)
    "SpecimenUID": "U",  # (0040,0554)
    "StartAcquisitionDateTime": "X/D",  # (0018,9516)
    "StationAETitle": "X",  # (0008,0055)
    "StationName": "X/Z/D",  # (0008,1010)
    "StorageMediaFileSetUID": "U",  # (0088,0140)
    "StructureSetDate": "Z",  # (3006,0008)
    "StructureSetDescription": "X",  # (3006,0006)
    "StructureSetLabel": "D",  # (3006,0002)
    "StructureSetName": "X",  # (3006,0004)
    "StructureSetTime": "Z",  # (3006,0009)
    "StudyArrivalDate": "X",  # (0032,1040) retired
    "StudyArrivalTime": "X",  # (0032,1041) retired
    "StudyComments": "X",  # (0032,4000) retired
    "StudyCompletionDate": "X",  # (0032,1050) retired
    "StudyCompletionTime": "X",  # (0032,1051) retired
    "StudyDate": "Z",  # (0008,0020)
    "StudyDescription": "X",  # (0008,1030)
    "StudyID": "Z",  # (0020,0010)
    "StudyIDIssuer": "X",  # (0032,0012) retired
    "StudyInstanceUID": "U",  # (0020,000D)
    "StudyReadDate": "X",  # (0032,0034) retired
    "StudyReadTime": "X",  # (0032,0035) retired
    "StudyTime": "Z",  # (0008,0030)
    "StudyVerifiedDate": "X",  # (0032,0032) retired
    "StudyVerifiedTime": "X",  # (0032,0033) retired
    "SubstanceAdministrationDateTime": "X",  # (0044,0010)
    "SynchronizationFrameOfReferenceUID": "U",  # (0020,0200)
    "TableTopPositionAlignmentUID": "U",  # (300A,0054)
    "TargetUID": "U",  # (0018,2042)
    "TelephoneNumberTrial": "X",  # (0040,A354) retired
    "TemplateExtensionCreatorUID": "U",  # (0040,DB0D) retired
    "TemplateExtensionOrganizationUID": "U",  # (0040,DB0C) retired
    "TemplateLocalVersion": "X",  # (0040,DB07) retired
    "TemplateVersion": "X",  # (0040,DB06) retired
    "TextComments": "X",  # (4000,4000) retired
    "TextString": "X",  # (2030,0020)
    "Time": "D",  # (0040,A122)
    "TimeOfDocumentCreationOrVerbalTransactionTrial": "X",  # (0040,A112) retired
    "TimeOfLastCalibration": "X",  # (0018,1201)
    "TimeOfLastDetectorCalibration": "X/D",  # (0018,700E)
    "TimeOfSecondaryCapture": "X",  # (0018,1014)
    "TimezoneOffsetFromUTC": "X",  # (0008,0201)
    "TopicAuthor": "X",  # (0088,0910) retired
    "TopicKeywords": "X",  # (0088,0912) retired
    "TopicSubject": "X",  # (0088,0906) retired
    "TopicTitle": "X",  # (0088,0904) retired
    "TrackingUID": "U",  # (0062,0021)
    "TransactionUID": "U",  # (0008,1195)
    "TransducerIdentificationSequence": "X",  # (0018,5011)
    "TreatmentControlPointDate": "D",  # (3008,0024)
    "TreatmentControlPointTime": "D",  # (3008,0025)
    "TreatmentDate": "X/D",  # (3008,0250)
    "TreatmentMachineName": "X/Z",  # (300A,00B2)
    "TreatmentPositionGroupLabel": "D",  # (300A,0608)
    "TreatmentPositionGroupUID": "U",  # (300A,0609)
    "TreatmentSessionUID": "U",  # (300A,0700)
    "TreatmentSite": "X/D",  # (3010,0077)
    "TreatmentSites": "X",  # (300A,000B) retired
    "TreatmentTechniqueNotes": "Z",  # (3010,007A)
    "TreatmentTime": "X/D",  # (3008,0251)
    "TreatmentToleranceViolationDateTime": "D",  # (300A,0736)
    "TreatmentToleranceViolationDescription": "D",  # (300A,0734)
    "UDISequence": "X",  # (0018,100A)
    "UID": "U",  # (0040,A124)
    "UnformattedTextValue": "D",  # (0070,0006)
    "UniqueDeviceIdentifier": "X",  # (0018,1009)
    "UserContentLabel": "D",  # (3010,0033)
    "UserContentLongLabel": "D",  # (3010,0034)
    "VerbalSourceIdentifierCodeSequenceTrial": "X",  # (0040,A358) retired
    "VerbalSourceTrial": "X",  # (0040,A352) retired
    "VerificationDateTime": "D",  # (0040,A030)
    "VerifyingObserverIdentificationCodeSequence": "Z",  # (0040,A088)
    "VerifyingObserverName": "D",  # (0040,A075)
    "VerifyingObserverSequence": "D",  # (0040,A073)
    "VerifyingOrganization": "D",  # (0040,A027)
    "VisitComments": "X",  # (0038,4000)
    "WaveformAnnotationSequence": "X/D",  # (0040,B020)
    "WaveformFilterDescription": "X",  # (003A,0329)
    "XRayDetectorID": "D",  # (0018,9371)
    "XRayDetectorLabel": "X",  # (0018,9373)
    "XRaySourceID": "D",  # (0018,9367)
}

# The standard's Retain options that ingest may need in memory (PS3.15 E.3): PET SUV needs the
# patient's weight and the injection/scan times. Each adds its CID 7050 code to the method.
RETAIN_PATIENT_CHARACTERISTICS = "patient_characteristics"
RETAIN_LONGITUDINAL_FULL_DATES = "longitudinal_full_dates"
_PATIENT_CHARACTERISTICS = frozenset(
    {"PatientAge", "PatientSex", "PatientSize", "PatientWeight", "EthnicGroup", "PatientSexNeutered", "PregnancyStatus", "SmokingStatus"}
)
_TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})
# Dates of the person, not of the examination: the full-dates option keeps none of them here.
_PERSONAL_DATES = frozenset({"PatientBirthDate", "PatientBirthTime", "LastMenstrualDate"})
# What a PET image must keep in memory for ``dicom_io.suv_factor`` (weight, dose and scan times).
SUV_RETAIN_OPTIONS = (RETAIN_PATIENT_CHARACTERISTICS, RETAIN_LONGITUDINAL_FULL_DATES)

# CID 7050 "De-identification Method" codes (scheme DCM) for the profile and its options.
_METHOD_CODES = {
    None: ("113100", "Basic Application Confidentiality Profile"),
    RETAIN_LONGITUDINAL_FULL_DATES: ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
}
DEIDENTIFICATION_METHOD = "DICOM PS3.15 E.1 Basic Profile (medtrinity-assets)"

# Root of the pseudonymous UIDs: "2.25." followed by a UUID as an integer (PS3.5 B.2).
UID_ROOT = "2.25."

# Dummy values for "D" per VR: valid for the VR and meaningless.
_DUMMY_BY_VR = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "IS": "0",
    "DS": "0",
}
_DUMMY_TEXT = "ANONYMIZED"
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"})
_BYTES_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
# Well-known class and syntax UIDs name a kind of object, not an instance: never remapped.
_CLASS_UID_KEYWORDS = frozenset({"TransferSyntaxUID", "ImplementationClassUID", "CodingSchemeUID"})
# Free text: in the items of a sequence marked "D" it is replaced by a dummy (``_dummy_free_text``).
_FREE_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})


@dataclass
class DeidReport:
    """What ``apply_basic_profile`` did to one dataset: counts only, never values."""

    actions: Counter = field(default_factory=Counter)  # "X", "Z", "D", "U", "K" -> elements
    private_removed: int = 0
    curves_overlays_removed: int = 0
    person_names_emptied: int = 0  # PN elements the table does not list
    uids_remapped: int = 0  # UID values (not elements) replaced, listed or not

    def as_metadata(self) -> dict:
        return {
            "deid_actions": dict(sorted(self.actions.items())),
            "deid_private_removed": self.private_removed,
            "deid_curves_overlays_removed": self.curves_overlays_removed,
            "deid_person_names_emptied": self.person_names_emptied,
            "deid_uids_remapped": self.uids_remapped,
        }


def pseudonymous_uid(uid: str, salt: str) -> str:
    """The same UID and salt always give the same replacement (series still group, references
    still resolve); without the salt it cannot be traced back. A name-based UUID (RFC 4122 v5)
    in a namespace derived from the salt, under the 2.25 root."""
    namespace = uuid.uuid5(uuid.NAMESPACE_OID, f"medtrinity-deid:{salt}")
    return UID_ROOT + str(uuid.uuid5(namespace, str(uid).strip("\x00 ")).int)


def _resolve(action: str, vr: str) -> str:
    """One action for a compound table entry. Without per-IOD Type tables: a sequence marked
    U* is kept and its UIDs replaced; otherwise Z where offered (zero-length keeps a Type 2
    attribute present and carries nothing), else X."""
    options = action.split("/")
    if len(options) == 1:
        return options[0]
    if "U*" in options and vr == "SQ":
        return "U*"
    return "Z" if "Z" in options else "X"


def _dummy(elem: DataElement):
    if elem.VR in _DUMMY_BY_VR:
        return _DUMMY_BY_VR[elem.VR]
    if elem.VR in _NUMERIC_VRS:
        return 0
    if elem.VR in _BYTES_VRS:
        return b""
    return _DUMMY_TEXT


def _dummy_free_text(item: Dataset, report: DeidReport) -> None:
    """A sequence marked "D" (Content Sequence, Graphic Annotation Sequence...) is to be replaced
    by dummy content. Its items are de-identified like any others, and the free text they hold
    directly, which the table does not list on its own (an SR TEXT item's Text Value), gets a
    dummy value here; coded values one sequence deeper (Concept Name Code Sequence) are kept."""
    for elem in item:
        if (
            elem.VR in _FREE_TEXT_VRS
            and not elem.tag.is_private
            and not elem.is_empty
            and elem.keyword not in BASIC_PROFILE_ACTIONS
        ):
            elem.value = _DUMMY_TEXT
            report.actions["D"] += 1


def _is_curve_or_overlay(tag: BaseTag) -> bool:
    # Curves (50xx) and overlays (60xx, even groups only) may draw names or annotations.
    return tag.group % 2 == 0 and (0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF)


def _is_instance_uid(keyword: str, value: str) -> bool:
    # A registered UID (SOP class, transfer syntax, coding scheme...) names no instance.
    return not keyword.endswith("ClassUID") and keyword not in _CLASS_UID_KEYWORDS and UID(value).name == value


def _values(elem: DataElement) -> list:
    return list(elem.value) if elem.VM > 1 else [elem.value]


def _remap_uids(elem: DataElement, salt: str, report: DeidReport, listed: bool) -> None:
    """Replace the element's UIDs: every one for a listed "U", instance UIDs only otherwise."""
    if elem.is_empty:
        return
    mapped = []
    for value in _values(elem):
        text = str(value).strip("\x00 ")
        if text and (listed or _is_instance_uid(elem.keyword, text)):
            mapped.append(pseudonymous_uid(text, salt))
            report.uids_remapped += 1
        else:
            mapped.append(value)
    elem.value = mapped if elem.VM > 1 else mapped[0]


# Unlisted elements of these VRs are still read: names, UIDs, and sequences (to recurse).
_VRS_ALWAYS_CHECKED = frozenset({"PN", "UI", "SQ", None})


def _stored_vr(ds: Dataset, tag: BaseTag) -> str | None:
    """The element's VR without decoding its value: explicit-VR files store it; for
    implicit VR the data dictionary gives it (None when unknown, which forces a full read)."""
    vr = getattr(ds.get_item(tag), "VR", None)
    if vr:
        return vr
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _deidentify(ds: Dataset, salt: str, retain: frozenset[str], report: DeidReport) -> None:
    for tag in list(ds.keys()):
        tag = Tag(tag)
        if tag.is_private:
            del ds[tag]
            report.private_removed += 1
            continue
        if _is_curve_or_overlay(tag):
            del ds[tag]
            report.curves_overlays_removed += 1
            continue
        if tag in UNNAMED_PROFILE_TAGS:
            del ds[tag]
            report.actions["X"] += 1
            continue
        keyword = keyword_for_tag(tag)
        listed = BASIC_PROFILE_ACTIONS.get(keyword)
        if listed is None and _stored_vr(ds, tag) not in _VRS_ALWAYS_CHECKED:
            # Kept by the profile: skip decoding the value (most elements of a file; decoding
            # them all doubled the cost of ingesting a CT slice).
            continue
        elem = ds[tag]
        if listed is None:
            if elem.VR == "PN" and not elem.is_empty:
                # A person's name is identifying wherever it appears, listed or not.
                elem.value = ""
                report.person_names_emptied += 1
            elif elem.VR == "UI":
                _remap_uids(elem, salt, report, listed=False)
            elif elem.VR == "SQ":
                for item in elem.value:
                    _deidentify(item, salt, retain, report)
            continue
        action = _resolve(listed, elem.VR)
        if (RETAIN_PATIENT_CHARACTERISTICS in retain and keyword in _PATIENT_CHARACTERISTICS) or (
            RETAIN_LONGITUDINAL_FULL_DATES in retain and elem.VR in _TEMPORAL_VRS and keyword not in _PERSONAL_DATES
        ):
            action = "K"
        report.actions[action.rstrip("*")] += 1
        if action in ("X", "C"):
            # "C" (clean) would need to rewrite free text safely; removal is the safe reading.
            del ds[tag]
        elif action == "Z":
            elem.value = [] if elem.VR == "SQ" else (b"" if elem.VR in _BYTES_VRS else None)
        elif action == "D":
            if elem.VR == "SQ":
                for item in elem.value:
                    _dummy_free_text(item, report)
                    _deidentify(item, salt, retain, report)
            elif elem.VR == "UI":
                _remap_uids(elem, salt, report, listed=True)
            else:
                elem.value = _dummy(elem)
        elif action == "U":
            _remap_uids(elem, salt, report, listed=True)
        elif action in ("U*", "K") and elem.VR == "SQ":
            for item in elem.value:
                _deidentify(item, salt, retain, report)


def apply_basic_profile(ds: Dataset, salt: str, retain: Iterable[str] = ()) -> DeidReport:
    """De-identify ``ds`` in place per DICOM PS3.15 Annex E, Basic Application Level
    Confidentiality Profile (Table E.1-1), at every sequence depth and in the file meta.

    Also: every private element removed (no Retain Safe Private option), curves and overlays
    removed, unlisted person names emptied and unlisted instance UIDs replaced like listed ones.
    ``retain`` may name standard Retain options (``RETAIN_PATIENT_CHARACTERISTICS``,
    ``RETAIN_LONGITUDINAL_FULL_DATES``), recorded in the method code sequence. Pixel Data is
    untouched: text burned into pixels is flagged by ``has_burned_in_annotation``, not removed.
    """
    retain = frozenset(retain)
    unknown = retain - {RETAIN_PATIENT_CHARACTERISTICS, RETAIN_LONGITUDINAL_FULL_DATES}
    if unknown:
        raise ValueError(f"unknown retain option(s) {sorted(unknown)}")
    report = DeidReport()
    _deidentify(ds, salt, retain, report)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _deidentify(meta, salt, retain, report)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    codes = []
    for option in (None, *sorted(retain)):
        value, meaning = _METHOD_CODES[option]
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
        codes.append(code)
    ds.DeidentificationMethodCodeSequence = codes
    ds.LongitudinalTemporalInformationModified = "UNMODIFIED" if RETAIN_LONGITUDINAL_FULL_DATES in retain else "REMOVED"
    return report


def has_burned_in_annotation(ds: Dataset) -> bool:
    """True when the header declares identifying text burned into the pixels
    (BurnedInAnnotation = YES). "NO" or absent is not proof of clean pixels."""
    return str(ds.get("BurnedInAnnotation") or "").strip().upper() == "YES"
