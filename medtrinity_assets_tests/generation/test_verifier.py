"""The verifier: sentences read into claims, each bound to the ROI it speaks of and checked
against facts; and the planted-contradiction benchmark on real rows."""

from __future__ import annotations

import pytest
from spec_factory import build_spec

from medtrinity_assets import schemas
from medtrinity_assets.generation.claims import default_vocabulary, read_clauses, split_sentences
from medtrinity_assets.generation.facts import Fact, FactSet
from medtrinity_assets.generation.verifier import verify, verify_claims
from medtrinity_assets_tests.conftest import needs_realdata

# --- hand-built facts --------------------------------------------------------------------


def record_facts(rid="rec1", modality="ultrasound", organs=("breast",), state="finding", findings=("benign breast tumor",),
                 rois=1, **extra) -> list[Fact]:
    facts = [Fact(rid, None, "modality", modality, "metadata"), Fact(rid, None, "label_state", state, "annotation")]
    facts += [Fact(rid, None, "organ", o, "metadata") for o in organs]
    facts += [Fact(rid, None, "finding", f, "annotation") for f in findings]
    facts.append(Fact(rid, None, "annotated_roi_count", str(rois), "annotation", number=float(rois)))
    for attribute, (value, provenance) in extra.items():
        facts.append(Fact(rid, None, attribute, value, provenance))
    return facts


def roi_facts(roi_id, rank, label="benign breast tumor", rid="rec1", horizontal="left", vertical="upper", size="small",
              shape="oval", margin="well-defined", intensity=("lower", "hypoechoic"), texture="homogeneous",
              fraction=0.02, diameter=None, count=1, side=None) -> list[Fact]:
    facts = [
        Fact(rid, roi_id, "label", label, "annotation"),
        Fact(rid, roi_id, "origin", "annotation:mask", "annotation"),
        Fact(rid, roi_id, "rank_by_area", str(rank), "measurement", number=float(rank)),
        Fact(rid, roi_id, "image_horizontal", horizontal, "measurement"),
        Fact(rid, roi_id, "image_vertical", vertical, "measurement"),
        Fact(rid, roi_id, "size_class", size, "measurement"),
        Fact(rid, roi_id, "shape", shape, "measurement"),
        Fact(rid, roi_id, "margin", margin, "measurement"),
        Fact(rid, roi_id, "texture", texture, "measurement"),
        Fact(rid, roi_id, "intensity", intensity[0], "measurement", detail=intensity[1]),
        Fact(rid, roi_id, "area_fraction", f"{fraction:.4f}", "measurement", number=fraction),
        Fact(rid, roi_id, "count_same_label", str(count), "annotation", number=float(count)),
    ]
    if diameter is not None:
        facts.append(Fact(rid, roi_id, "max_diameter_mm", f"{diameter:.1f}", "geometry", number=diameter, unit="mm"))
    if side is not None:
        facts.append(Fact(rid, roi_id, "patient_side", side[0], side[1]))
    return facts


def busi_one() -> FactSet:
    return FactSet(record_facts() + roi_facts("a", 1, diameter=12.0))


def busi_two() -> FactSet:
    """Two lesions: the larger on the image left (hypoechoic, oval), the smaller on the right
    (hyperechoic, irregular) — a claim true of one must not pass for the other."""
    return FactSet(record_facts(rois=2) + roi_facts("a", 1, count=2, size="large", fraction=0.2)
                   + roi_facts("b", 2, horizontal="right", vertical="lower", shape="irregular", margin="ill-defined",
                               intensity=("higher", "hyperechoic"), texture="heterogeneous", count=2))


def whole_image(state="unknown", findings=(), modality="xray", organs=("lung", "chest"), **extra) -> FactSet:
    return FactSet(record_facts(modality=modality, organs=organs, state=state, findings=findings, rois=0, **extra))


def flag_types(text: str, facts: FactSet) -> set[str]:
    return {flag.split(":")[0] for flag in verify(text, facts)}


# --- reading ------------------------------------------------------------------------------


def test_sentences_split_without_breaking_decimals_or_abbreviations():
    text = "It covers 2.1% of the image, e.g. near the edge. It measures 12 mm.\n\nThe margin is sharp."
    assert split_sentences(text) == ["It covers 2.1% of the image, e.g. near the edge.", "It measures 12 mm.",
                                     "The margin is sharp."]


def test_background_and_quoted_labels_are_not_claims():
    clauses = read_clauses("Background: on MRI, gliomas are hyperintense. The source labels it 'brain tumour'.")
    assert clauses[0].background and not clauses[1].background
    assert "brain" not in clauses[1].text  # a quoted label is the source's word


def test_vocabulary_comes_from_the_knowledge_corpus():
    vocabulary = default_vocabulary()
    assert "pleural_effusion" in vocabulary.entries_for("effusion")
    assert "bacterial_pneumonia" in vocabulary.entries_for("consolidation")
    assert not vocabulary.entries_for("normal")  # normal entries are not findings


# --- each claim type: true sentences pass, contradictions are flagged with their type ------

TRUE_SENTENCES = [
    "The lesion lies in the upper left part of the image.",
    "A small, hypoechoic, oval mass with well-defined margins is seen toward the left of the image.",
    "It measures about 12 mm and covers 2% of the image.",
    "A single lesion is annotated.",
    "The lesion is homogeneous in texture.",
    "The lesion is not hyperechoic and its margins are not ill-defined.",
    "This ultrasound image shows the breast; the skin, the pectoral muscle and the chest wall are visible.",
    "The appearance is consistent with a benign breast tumour.",
    "The finding is benign.",
]


@pytest.mark.parametrize("sentence", TRUE_SENTENCES)
def test_true_sentences_verify_clean(sentence):
    assert verify(sentence, busi_one()) == []


CONTRADICTIONS = [
    ("side", "The lesion lies in the upper right part of the image."),
    ("side", "On the right of the frame there is a lesion."),
    ("position", "The lesion sits in the lower half of the image."),
    ("size", "A large mass is seen."),
    ("size", "The lesion measures 3.5 cm."),
    ("size", "It covers 40% of the image."),
    ("count", "Two lesions are seen."),
    ("count", "Multiple nodules are seen."),
    ("shape", "The lesion is irregular in shape."),
    ("margin", "The mass has spiculated margins."),
    ("intensity", "The lesion is hyperechoic."),
    ("texture", "The lesion is heterogeneous."),
    ("negation", "The lesion is not hypoechoic."),
    ("negation", "No mass is seen in this image."),
    ("modality", "This MRI shows the breast."),
    ("organ", "The image shows the brain."),
    ("finding", "There is a small pleural effusion."),
    ("finding", "The appearance suggests a malignant lesion."),
    ("laterality", "A 2 cm hypoechoic mass is seen in the left breast."),
    ("laterality", "The lesion is on the patient's right."),
    ("quadrant", "The lesion lies in the upper outer quadrant."),
    ("normal", "The breast is normal."),
]


@pytest.mark.parametrize("kind,sentence", CONTRADICTIONS)
def test_each_contradiction_is_flagged_with_its_type(kind, sentence):
    flags = verify(sentence, busi_one())
    assert kind in {f.split(":")[0] for f in flags}, flags
    assert all(" / facts: " in f for f in flags)


def test_natural_issue_sentences_are_caught():
    facts = busi_one()
    # The issue's examples: a side, a quadrant and an invented finding in one natural sentence.
    flags = verify("A 2 cm hypoechoic mass is seen in the upper outer quadrant of the left breast.", facts)
    assert {"quadrant", "laterality", "size"} <= {f.split(":")[0] for f in flags}, flags
    assert "lower left quadrant" in " ".join(verify("There is a mass in the lower left quadrant.", facts))


def test_invented_findings_on_a_whole_image_row():
    facts = whole_image()
    flags = verify("There is consolidation in the right lower zone with a small effusion.", facts)
    types = {f.split(":")[0] for f in flags}
    assert {"finding", "quadrant"} <= types, flags
    assert "lesion_on_whole_image" in flag_types("A small nodule is seen.", facts)
    assert verify("No region is annotated in this image, so no lesion is described.", facts) == []


# --- binding: a claim is checked against the ROI it speaks of, not any ROI ------------------


def test_second_roi_is_checked_against_its_own_facts():
    facts = busi_two()
    assert verify("The second lesion lies in the lower right part of the image.", facts) == []
    # True of the first lesion only: flagged for the second.
    assert "side" in flag_types("The second lesion lies in the upper left part of the image.", facts)
    assert "intensity" in flag_types("The smaller lesion is hypoechoic.", facts)
    assert verify("The smaller lesion is hyperechoic and irregular.", facts) == []
    # No reference: the primary (largest) ROI.
    assert "side" in flag_types("A lesion is seen in the right part of the image.", facts)


def test_subject_is_carried_by_it():
    facts = busi_two()
    assert verify("The second lesion is in the lower right part of the image. It is hyperechoic.", facts) == []
    assert "intensity" in flag_types("The second lesion is in the lower right part of the image. It is hypoechoic.", facts)


def test_one_roi_of_a_listed_group_must_support_the_whole_clause():
    facts = busi_two()
    listing = "The other annotated regions: a small benign breast tumor region in the lower right part of the image."
    assert verify(listing, facts) == []
    # Position of one ROI with intensity of the other: no single ROI supports both.
    assert verify("The other regions: a hypoechoic one in the lower right part of the image.", facts)


def test_count_of_a_named_label():
    facts = busi_two()
    assert verify("Two lesions are annotated; it is the largest of 2 regions labelled benign breast tumor.", facts) == []
    assert "count" in flag_types("There is a solitary lesion.", facts)
    assert "count" in flag_types("Three benign breast tumors are annotated.", facts)


# --- patient side, publisher text, neighbours, hybrids, normal ---------------------------------


def test_patient_side_needs_geometry_metadata_or_publisher_text():
    measured = FactSet(record_facts() + roi_facts("a", 1, side=("left", "measurement")))
    assert "laterality" in flag_types("The lesion is on the patient's left.", measured)
    geometry = FactSet(record_facts() + roi_facts("a", 1, side=("left", "geometry")))
    assert verify("The lesion is on the patient's left side.", geometry) == []
    assert "laterality" in flag_types("The lesion is on the patient's right side.", geometry)
    declared = FactSet(record_facts(laterality=("left", "metadata")) + roi_facts("a", 1))
    assert verify("This is the left breast.", declared) == []
    assert "laterality" in flag_types("A mass is seen in the right breast.", declared)
    # Anatomy names with a side word say nothing about the patient's side.
    heart = whole_image(modality="mri", organs=("heart",), state="finding", findings=("left ventricle cavity",))
    assert "laterality" not in flag_types("The left ventricle and the right atrium are visible.", heart)


def test_publisher_text_supports_the_claims_it_contains():
    facts = whole_image(state="finding", findings=("pneumonia",),
                        publisher_text=("Rounded opacity in the right lower zone, consolidation along the left costal margin.",
                                        "publisher_text"))
    assert verify("There is a rounded opacity in the right lower zone.", facts) == []
    assert verify("Consolidation is seen along the left costal margin.", facts) == []
    flags = verify("There is a rounded opacity in the left lower zone.", facts)
    assert "quadrant" in {f.split(":")[0] for f in flags}, flags


def test_neighbouring_anatomy_and_hybrid_modalities():
    chest = whole_image(state="finding", findings=("covid 19 pneumonia",))
    assert verify("The ribs, the spine, the heart and the diaphragm are visible on this chest X-ray.", chest) == []
    assert "organ" in flag_types("The kidney is visible.", chest)
    brain_ct = whole_image(modality="ct", organs=("brain",), state="unknown")
    assert verify("This FDG-PET/CT slice shows the brain within the skull and the scalp.", brain_ct) == []
    assert "modality" in flag_types("This PET/MRI shows the brain.", brain_ct)
    assert "modality" in flag_types("This ultrasound shows the brain.", brain_ct)
    # Marked background may name other modalities.
    assert verify("Typically, on MRI such lesions are hyperintense.", brain_ct) == []


def test_normal_only_when_the_source_says_so():
    assert "normal" in flag_types("The chest radiograph is normal.", whole_image(state="unknown"))
    assert "normal" in flag_types("No abnormality is seen.", whole_image(state="finding", findings=("pneumonia",)))
    normal = whole_image(state="normal")
    assert verify("The chest radiograph is normal; no abnormality is seen.", normal) == []
    assert "finding" in flag_types("There is a pneumothorax.", normal)


def test_old_call_shape_builds_facts_from_rows():
    spec = build_spec(id="busi", name="Busi", modality="ultrasound", organs=["breast"])
    record = {"record_id": "rec1", "source_id": "busi", "source_file": "a.png", "slice_index": -1, "slice_count": 1,
              "modality": "ultrasound", "organs": ["breast"], "labels": ["benign"], "image_width": 500,
              "image_height": 400, "scale": 1.0}
    roi = {name: None for name in schemas.ROIS.names}
    roi.update(roi_id="a", record_id="rec1", label="benign", origin="annotation:mask", area_px=100, area_fraction=0.02,
               horizontal="left", vertical="upper", size_class="small", intensity_word="hypoechoic", count_same_label=1,
               x0=1, y0=1, x1=10, y1=10)
    assert verify("A small hypoechoic lesion lies in the upper left part of the image.", record, [roi], spec) == []
    assert verify("A large lesion lies in the upper left part of the image.", record, [roi], spec)


def test_verdicts_name_the_roi_they_were_checked_against():
    verdicts = verify_claims("The second lesion is hypoechoic.", busi_two())
    intensity = [v for v in verdicts if v.claim.kind == "intensity"]
    assert intensity and intensity[0].roi_id == "b" and not intensity[0].supported


# --- real rows: the writer's text verifies clean; the benchmark meets its targets ----------------


@pytest.fixture(scope="module")
def real_rows(tmp_path_factory):
    from medtrinity_assets.bench_verifier import real_factsets

    return real_factsets(["busi", "covid_chestxray", "isic2017", "ham10000", "dsb2018"],
                         tmp_path_factory.mktemp("bench_verifier"), log=lambda *_: None)


@needs_realdata
def test_benchmark_on_real_rows_meets_targets(real_rows):
    from medtrinity_assets.bench_verifier import CLAIM_TYPES, TARGET_CATCH, TARGET_FALSE_ALARM, run_benchmark

    assert len(real_rows) > 40
    result = run_benchmark(real_rows, seed=3, per_source=12)
    # Every claim type is planted, and each is caught.
    planted_types = {k for k, n in result.planted.items() if n}
    assert planted_types >= set(CLAIM_TYPES) - {"combined"}, set(CLAIM_TYPES) - planted_types
    for kind in planted_types:
        assert result.catch_rate(kind) >= TARGET_CATCH, (kind, [c.text for c in result.missed if c.claim_type == kind][:3])
    assert result.true_total["writer"] > 40 and result.false_alarms["writer"] == 0, result.alarms[:3]
    assert result.false_alarm_rate <= TARGET_FALSE_ALARM, result.alarms[:5]


@needs_realdata
def test_benchmark_corpus_is_deterministic(real_rows):
    from medtrinity_assets.bench_verifier import build_corpus

    assert build_corpus(real_rows, seed=5, per_source=3) == build_corpus(real_rows, seed=5, per_source=3)
    assert build_corpus(real_rows, seed=5, per_source=3) != build_corpus(real_rows, seed=6, per_source=3)


def test_corpus_uses_publisher_zones_and_patient_sides_when_facts_give_them():
    import random

    from medtrinity_assets.bench_verifier import cases_for_record

    facts = FactSet(record_facts(modality="xray", organs=("lung", "chest"), findings=("pneumonia",), rois=1,
                                 publisher_text=("Patchy consolidation in the right lower zone.", "publisher_text"))
                    + roi_facts("a", 1, label="pneumonia", side=("right", "geometry")))
    cases = cases_for_record("src", facts, random.Random(0), default_vocabulary())
    kinds = {(c.claim_type, c.planted) for c in cases}
    assert {("quadrant", False), ("quadrant", True), ("laterality", False), ("laterality", True)} <= kinds
    for case in cases:
        flags = verify(case.text, facts)
        assert bool(flags) == case.planted, (case, flags)


# --- descriptions as a language model writes them, on the facts of real rows ------------------
# (facts copied from a BUSI image with two benign lesions and an IBSI sarcoma MRI slice)


def busi_two_real() -> FactSet:
    return FactSet(record_facts(rois=2) + roi_facts("a", 1, count=2, fraction=0.0077)
                   + roi_facts("b", 2, horizontal="center", margin="ill-defined", fraction=0.0025, count=2))


def ibsi_mri_slice() -> FactSet:
    return FactSet(record_facts(modality="mri", organs=("soft tissue", "extremity"), findings=("soft tissue sarcoma",))
                   + roi_facts("t", 1, label="soft tissue sarcoma", horizontal="center", vertical="middle", size="large",
                               shape="round", margin="ill-defined", intensity=("similar", "isointense"), fraction=0.2021))


LLM_BUSI = (
    "Modality: This is a B-mode breast ultrasound image (512 x 429 pixels).\n"
    "Organ and tissue: The image depicts breast tissue, with the overlying skin and subcutaneous fat in the near field. "
    "The source labels the finding as a benign breast tumor.\n"
    "ROI location and analysis: Two small lesions are annotated. The larger one is located in the upper left part of the "
    "image and occupies about 0.8% of the image area; the second, smaller lesion lies in the upper central part of the image.\n"
    "Texture and colour: The larger lesion is hypoechoic and homogeneous, with an oval shape and well-defined margins. "
    "The smaller lesion is also oval and hypoechoic, but its margins are ill-defined.\n"
    "Region relations: The larger lesion lies to the left of the smaller one; both are in the upper half of the image. "
    "These features are compatible with a benign breast tumour."
)
LLM_IBSI = (
    "This axial MRI slice (slice 32 of 59) shows the soft tissue of the extremity. A large, round, isointense mass lies in "
    "the centre of the image, consistent with the labelled soft-tissue sarcoma. Its texture is homogeneous and its margins "
    "are ill-defined. It covers roughly 20% of the image."
)


def test_language_model_style_descriptions_verify_clean():
    assert verify(LLM_BUSI, busi_two_real()) == []
    assert verify(LLM_IBSI, ibsi_mri_slice()) == []


@pytest.mark.parametrize("facts,sentence,kind", [
    (busi_two_real, "Two small lesions are annotated. The second, smaller lesion lies in the upper left part of the image.", "side"),
    (busi_two_real, "The smaller lesion is also oval and hypoechoic, and its margins are well-defined.", "margin"),
    (busi_two_real, "The larger lesion is hyperechoic with posterior acoustic shadowing.", "intensity"),
    (busi_two_real, "Three small lesions are annotated.", "count"),
    (ibsi_mri_slice, "The tumour is located in the left thigh.", "laterality"),
    (ibsi_mri_slice, "This PET/CT slice shows the thigh.", "modality"),
    (ibsi_mri_slice, "The tumour measures 8 cm in diameter.", "size"),
    (ibsi_mri_slice, "The mass is not isointense.", "negation"),
    (ibsi_mri_slice, "Small bilateral pleural effusions are present.", "finding"),
])
def test_language_model_style_contradictions_are_caught(facts, sentence, kind):
    assert kind in flag_types(sentence, facts())


def test_colour_against_the_measured_colour_name():
    facts = FactSet(record_facts(modality="dermoscopy", organs=("skin",), findings=("melanoma",)) + roi_facts("a", 1, label="melanoma")
                    + [Fact("rec1", "a", "colour", "brown", "measurement")])
    assert verify("A dark brown lesion is seen; the lesion is predominantly brown.", facts) == []
    assert "colour" in flag_types("The lesion is pink.", facts)
    assert "colour" in flag_types("Its colour is blue.", facts)
    # Anatomy and finding names that contain a colour word are not colour claims.
    assert "colour" not in flag_types("A blue nevus is in the differential.", facts)
    # On a grey-scale image, white/black describe brightness.
    xray = FactSet(record_facts(modality="xray", organs=("lung",), findings=("lung opacity",)) + roi_facts("a", 1, label="lung opacity"))
    assert "colour" not in flag_types("A white opacity is seen.", xray)


def test_bounded_figures():
    facts = busi_one()  # 12 mm, 2% of the image
    assert verify("The lesion covers less than 5% of the image and measures under 2 cm.", facts) == []
    assert "size" in flag_types("The lesion covers more than 10% of the image.", facts)
    assert "size" in flag_types("The lesion measures more than 3 cm.", facts)


def test_structured_publisher_statements():
    import json

    def note(sentence, **statement):
        detail = {"terms": [], "sides": [], "zones": [], "negated": False, "uncertain": False, "modalities": [], **statement}
        return Fact("rec1", None, "publisher_text", sentence, "publisher_text", detail=json.dumps(detail))

    facts = FactSet(record_facts(modality="xray", organs=("lung",), findings=("covid 19 pneumonia",), rois=0) + [
        note("Consolidation along the left costal margin.", terms=["consolidation"], sides=["left"], zones=["costal margin"]),
        note("No pleural effusion.", terms=["pleural effusion"], negated=True),
        note("CT showed ground-glass opacities in both lower lobes.", terms=["ground-glass opacity"], sides=["bilateral"],
             zones=["lower lobe"], modalities=["ct"]),
    ])
    assert verify("There is consolidation along the left costal margin, without pleural effusion.", facts) == []
    assert "laterality" in flag_types("There is consolidation along the right costal margin.", facts)
    assert "finding" in flag_types("A pleural effusion is present.", facts)
    # A CT statement in the radiograph's note: reportable as what the notes say, not as seen here.
    assert verify("The publisher's notes report ground-glass opacity in both lower lobes.", facts) == []
    assert flag_types("Ground-glass opacities are seen in both lower lobes.", facts)


# --- sentences written by someone other than the benchmark's author ----------------------
# The planted corpus and the verifier share an author; these are a reviewer's own wordings of
# common model errors, each on a one-lesion breast ultrasound (hypoechoic oval 12 mm lesion on
# the image left, no patient side known) or a whole-image chest X-ray with an unknown label.


def cxr_unknown() -> FactSet:
    return FactSet(record_facts(modality="xray", organs=("chest", "lung"), state="unknown", findings=(), rois=0))


@pytest.mark.parametrize(
    "facts,sentence",
    [
        (busi_one, "The lesion shows increased echogenicity relative to the fat."),
        (busi_one, "Axillary lymph nodes appear enlarged."),
        (busi_one, "The mass is located at the 10 o'clock position of the right breast."),
        (busi_one, "No abnormality is seen in this breast ultrasound."),
        (busi_one, "The lesion measures about 4 cm."),
        (cxr_unknown, "The heart is enlarged."),
        (cxr_unknown, "The lungs are clear."),
        (cxr_unknown, "There is a small right pleural effusion."),
        (cxr_unknown, "A mass projects over the left upper zone."),
    ],
)
def test_reviewer_wordings_of_unsupported_claims_are_flagged(facts, sentence):
    assert verify(sentence, facts()), sentence


@pytest.mark.parametrize(
    "facts,sentence",
    [
        (busi_one, "A hypoechoic, oval lesion with a well-defined margin lies in the upper left part of the image."),
        (busi_one, "The lesion is about 12 mm across."),
        (cxr_unknown, "This frontal chest radiograph shows the lungs and the heart."),
    ],
)
def test_reviewer_wordings_of_true_statements_pass(facts, sentence):
    assert verify(sentence, facts()) == [], sentence
