"""R-CNN (Girshick et al., 2014), the baseline of the detector time line.

Selective-search proposals (:mod:`~dl09_keras.rcnn.proposals`), each warped to a
fixed size and described by a small CNN trained from scratch
(:mod:`~dl09_keras.rcnn.regions`, :mod:`~dl09_keras.rcnn.region_cnn`), scored by
one linear SVM per class (:mod:`~dl09_keras.rcnn.svm`), refined by class-specific
box regression and thinned by NMS per class (:mod:`~dl09_keras.rcnn.detector`).
"""
