"""Expert models: ROIs for images whose source marks none (issue 10).

MedTrinity located regions with expert models (SAT, CheXmask, HoverNet, Cellpose) where a source
had no annotation. Here an expert is a detector or segmenter trained per (modality, target) from
the annotated partitions of that modality, versioned like data under the data root, and applied
to the images that have no annotation. Its ROIs carry provenance ``model`` and a confidence, and
the text words them as model findings, never as ground truth.

Layout (functional core, no Dagster here):

- ``spec``      ExpertSpec: one YAML file per expert under ``data/experts/``.
- ``base``      the contract every family meets: Sample, Instance, Prediction, TrainResult, Family.
- ``samples``   training samples from the data root (normalized images + annotation masks),
                split by patient with the dataset's own rule.
- ``monai_family`` / ``yolo_family``  the two families (MONAI UNet / SegResNet; ultralytics YOLO).
- ``weights``   content-hashed weight files, the ``current.json`` pointer, bring-your-own loading.
- ``postprocess`` probability maps / instances -> ROI candidates (threshold, min area, max count).
- ``metrics``   Dice, box IoU and mAP50 computed the same way for every family.
- ``training``  train_expert: samples -> family.train -> evaluate -> save (skips when the
                training data and spec are unchanged).
- ``apply``     model ROIs for one partition (stages.run_model_rois calls it).
"""
