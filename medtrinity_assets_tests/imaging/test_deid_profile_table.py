"""BASIC_PROFILE_ACTIONS against DICOM PS3.15 Annex E, Table E.1-1 (Basic Profile column).

The expected values were read from the 2026c edition's table as transcribed by dicom-anonymizer
2.1.0 and cross-checked with its 2024b transcription and with idiscore 1.2.0 (scraped from the
NEMA "current" edition, 2024-09-19); all three agree on every value below.
"""

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from medtrinity_assets.imaging.deid import (
    BASIC_PROFILE_ACTIONS,
    _resolve,
    apply_basic_profile,
)

# Every action string the Basic Profile column of Table E.1-1 uses.
STANDARD_ACTIONS = {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
# What ``_deidentify`` does something with once ``_resolve`` has picked one option.
HANDLED = {"X", "Z", "D", "U", "K", "C", "U*"}

SPOT_CHECK = {
    "PatientName": "Z",
    "PatientID": "Z/D",
    "PatientBirthDate": "Z",
    "PatientSex": "Z",
    "PatientAge": "X",
    "PatientAddress": "X",
    "OtherPatientIDs": "X",
    "AccessionNumber": "Z",
    "StudyID": "Z",
    "StudyDate": "Z",
    "StudyTime": "Z",
    "StudyDescription": "X",
    "SeriesDescription": "X",
    "ReferringPhysicianName": "Z",
    "OperatorsName": "X/Z/D",
    "InstitutionName": "X/Z/D",
    "InstitutionAddress": "X",
    "StationName": "X/Z/D",
    "DeviceSerialNumber": "X/Z/D",
    "ProtocolName": "X/D",
    "StudyInstanceUID": "U",
    "SeriesInstanceUID": "U",
    "SOPInstanceUID": "U",
    "FrameOfReferenceUID": "U",
    "DigitalSignatureUID": "U",
    "SeriesDate": "X/D",
    "AcquisitionDate": "X/Z",
    "AcquisitionTime": "X/Z",
    "AcquisitionDateTime": "X/Z/D",
    "ContentDate": "Z/D",
    "ContentTime": "Z/D",
    "InstanceCreationDate": "X/D",
    "InstanceCreationTime": "X/Z/D",
    "ContentCreatorName": "Z/D",
    "VerifyingOrganization": "D",
    "ContentSequence": "D",
    "ImageComments": "X",
    "ReferencedImageSequence": "X/Z/U*",
    "SourceImageSequence": "X/Z/U*",
}


def test_every_keyword_is_a_dicom_keyword():
    unknown = [keyword for keyword in BASIC_PROFILE_ACTIONS if tag_for_keyword(keyword) is None]
    assert unknown == []


def test_table_is_complete_for_the_known_attributes():
    # 627 attributes of the 2026c table have a pydicom keyword (curves, overlays, private
    # attributes and 25 attributes newer than pydicom 3.0.2 are handled or noted elsewhere).
    assert len(BASIC_PROFILE_ACTIONS) == 627


@pytest.mark.parametrize("keyword, action", sorted(SPOT_CHECK.items()))
def test_spot_check_against_table_e_1_1(keyword, action):
    assert BASIC_PROFILE_ACTIONS[keyword] == action


@pytest.mark.parametrize(
    "keyword", ["ModifyingDeviceManufacturer", "CreatorVersionUID", "ContextGroupExtensionCreatorUID"]
)
def test_attributes_not_in_recent_editions_are_absent(keyword):
    assert keyword not in BASIC_PROFILE_ACTIONS


def test_every_action_string_is_a_standard_one():
    assert set(BASIC_PROFILE_ACTIONS.values()) <= STANDARD_ACTIONS


def test_every_action_string_resolves_to_a_handled_action():
    for keyword, action in BASIC_PROFILE_ACTIONS.items():
        vr = dictionary_VR(tag_for_keyword(keyword))
        resolved = _resolve(action, vr)
        assert resolved in HANDLED, (keyword, action, resolved)
        assert resolved in action.split("/"), (keyword, action, resolved)
        if resolved == "U*":
            assert vr == "SQ", keyword


@pytest.mark.parametrize(
    "action, vr, expected",
    [
        ("Z/D", "LO", "Z"),
        ("X/Z", "DA", "Z"),
        ("X/D", "TM", "X"),
        ("X/Z/D", "PN", "Z"),
        ("X/Z/U*", "SQ", "U*"),
        ("X/Z/U*", "UI", "Z"),
    ],
)
def test_compound_actions_prefer_z(action, vr, expected):
    assert _resolve(action, vr) == expected


def test_content_sequence_free_text_is_replaced():
    # Content Sequence is "D": its SR TEXT items must not keep their Text Value.
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "121106", "DCM", "Comment"
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = [concept]
    item.TextValue = "Seen by Dr Plantedname at Planted Hospital"
    nested = Dataset()
    nested.ValueType = "TEXT"
    nested.TextValue = "Planted nested note"
    item.ContentSequence = [nested]
    ds = Dataset()
    ds.PatientName = "Planted^Name"
    ds.ContentSequence = [item]

    apply_basic_profile(ds, salt="test")

    out = ds.ContentSequence[0]
    assert "Planted" not in str(out.TextValue)
    assert "Planted" not in str(out.ContentSequence[0].TextValue)
    assert out.ValueType == "TEXT" and out.ConceptNameCodeSequence[0].CodeValue == "121106"


def test_attributes_pydicom_cannot_name_are_removed_by_tag_number():
    # Recent editions add attributes pydicom 3.0.2 has no keyword for; the table removes them.
    from pydicom.dataset import Dataset

    from medtrinity_assets.imaging.deid import UNNAMED_PROFILE_TAGS, apply_basic_profile

    ds = Dataset()
    ds.add_new(0x00081301, "LO", "PLANTED-UNNAMED-8311")
    ds.add_new(0x00102162, "LO", "PLANTED-UNNAMED-2162")
    ds.PatientSex = "O"
    apply_basic_profile(ds, "salt")
    assert 0x00081301 not in ds and 0x00102162 not in ds
    assert len(UNNAMED_PROFILE_TAGS) == 25
