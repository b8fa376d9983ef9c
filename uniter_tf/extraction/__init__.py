"""Region-feature extraction: detectors, RoI pooling, box selection and the Beam pipeline.

* :mod:`.detector`: the :class:`Detector` interface and :func:`load_detector`.
* :mod:`.ssd_mobilenet`: the default detector (SSD-MobileNet-v2 COCO frozen graph).
* :mod:`.saved_model_detector`: any SavedModel with the documented signature.
* :mod:`.roi_pooling`: one feature vector per box from the detector's feature maps.
* :mod:`.region_extractor`: detector + UNITER box rule + pooling + soft labels -> one image record.
* :mod:`.beam_pipeline`: the Beam transforms behind ``uniter extract`` and the TFX component.

TensorFlow and Beam are imported by the submodules, not here.
"""
