"""UID constants: application context, service SOP classes, storage SOP classes and transfer
syntaxes (PS3.6 Annex A), plus this implementation's identity (PS3.7 D.3.3.2).

All constants are plain ``str`` so that they can be compared with UIDs decoded from PDUs or
command sets without conversion.  The full list of storage SOP classes is not written out here:
:func:`storage_sop_classes` derives it from pydicom's UID dictionary, which tracks the current
edition of PS3.6, and :func:`is_storage_sop_class` tests membership.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = [
    "ALL_TRANSFER_SYNTAXES",
    "APPLICATION_CONTEXT_NAME",
    "BASIC_TEXT_SR_STORAGE",
    "BREAST_TOMOSYNTHESIS_IMAGE_STORAGE",
    "COMPREHENSIVE_SR_STORAGE",
    "COMPRESSED_TRANSFER_SYNTAXES",
    "COMPUTED_RADIOGRAPHY_IMAGE_STORAGE",
    "CT_IMAGE_STORAGE",
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "DIGITAL_INTRA_ORAL_XRAY_IMAGE_STORAGE_FOR_PRESENTATION",
    "DIGITAL_MAMMOGRAPHY_XRAY_IMAGE_STORAGE_FOR_PRESENTATION",
    "DIGITAL_MAMMOGRAPHY_XRAY_IMAGE_STORAGE_FOR_PROCESSING",
    "DIGITAL_XRAY_IMAGE_STORAGE_FOR_PRESENTATION",
    "DIGITAL_XRAY_IMAGE_STORAGE_FOR_PROCESSING",
    "ENCAPSULATED_PDF_STORAGE",
    "ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN",
    "ENHANCED_CT_IMAGE_STORAGE",
    "ENHANCED_MR_IMAGE_STORAGE",
    "ENHANCED_PET_IMAGE_STORAGE",
    "ENHANCED_SR_STORAGE",
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE",
    "HEVC_MAIN_10_PROFILE_LEVEL_5_1",
    "HEVC_MAIN_PROFILE_LEVEL_5_1",
    "HTJ2K",
    "HTJ2K_LOSSLESS",
    "HTJ2K_LOSSLESS_RPCL",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "JPEG_2000",
    "JPEG_2000_LOSSLESS",
    "JPEG_BASELINE_8BIT",
    "JPEG_EXTENDED_12BIT",
    "JPEG_LOSSLESS",
    "JPEG_LOSSLESS_SV1",
    "JPEG_LS_LOSSLESS",
    "JPEG_LS_NEAR_LOSSLESS",
    "KEY_OBJECT_SELECTION_DOCUMENT_STORAGE",
    "MODALITY_PERFORMED_PROCEDURE_STEP",
    "MODALITY_PERFORMED_PROCEDURE_STEP_NOTIFICATION",
    "MODALITY_PERFORMED_PROCEDURE_STEP_RETRIEVE",
    "MODALITY_WORKLIST_FIND",
    "MPEG2_MAIN_PROFILE_MAIN_LEVEL",
    "MPEG4_AVC_H264_HIGH_PROFILE_LEVEL_4_1",
    "MR_IMAGE_STORAGE",
    "MULTIFRAME_GRAYSCALE_BYTE_SC_IMAGE_STORAGE",
    "MULTIFRAME_GRAYSCALE_WORD_SC_IMAGE_STORAGE",
    "MULTIFRAME_SINGLE_BIT_SC_IMAGE_STORAGE",
    "MULTIFRAME_TRUE_COLOR_SC_IMAGE_STORAGE",
    "NUCLEAR_MEDICINE_IMAGE_STORAGE",
    "PATIENT_ROOT_QR_FIND",
    "PATIENT_ROOT_QR_GET",
    "PATIENT_ROOT_QR_MOVE",
    "PATIENT_STUDY_ONLY_QR_FIND",
    "PATIENT_STUDY_ONLY_QR_GET",
    "PATIENT_STUDY_ONLY_QR_MOVE",
    "POSITRON_EMISSION_TOMOGRAPHY_IMAGE_STORAGE",
    "RAW_DATA_STORAGE",
    "RLE_LOSSLESS",
    "RT_DOSE_STORAGE",
    "RT_IMAGE_STORAGE",
    "RT_PLAN_STORAGE",
    "RT_STRUCTURE_SET_STORAGE",
    "SECONDARY_CAPTURE_IMAGE_STORAGE",
    "SEGMENTATION_STORAGE",
    "STORAGE_COMMITMENT_PUSH_MODEL",
    "STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE",
    "STUDY_ROOT_QR_FIND",
    "STUDY_ROOT_QR_GET",
    "STUDY_ROOT_QR_MOVE",
    "ULTRASOUND_IMAGE_STORAGE",
    "ULTRASOUND_MULTIFRAME_IMAGE_STORAGE",
    "UNCOMPRESSED_TRANSFER_SYNTAXES",
    "VERIFICATION",
    "VL_ENDOSCOPIC_IMAGE_STORAGE",
    "VL_PHOTOGRAPHIC_IMAGE_STORAGE",
    "XRAY_ANGIOGRAPHIC_IMAGE_STORAGE",
    "XRAY_RADIOFLUOROSCOPIC_IMAGE_STORAGE",
    "is_storage_sop_class",
    "storage_sop_classes",
]

# --------------------------------------------------------------------------- identity

#: Our Implementation Class UID (PS3.7 D.3.3.2), sent in every A-ASSOCIATE-RQ/AC and written to
#: (0002,0012) of the files we store.  A UUID-derived UID (PS3.5 B.2: ``2.25.`` followed by the
#: decimal value of a UUID), generated once from a random (version 4) UUID and fixed here: it
#: needs no registered root and belongs to no other software.  Keep it unchanged across releases
#: (the Implementation Version Name tells releases apart).
IMPLEMENTATION_CLASS_UID = "2.25.312581430763013493233249181303429117357"
#: Our Implementation Version Name (PS3.7 D.3.3.2.3): 1 to 16 characters of the default repertoire.
IMPLEMENTATION_VERSION_NAME = "ASYNCDICOM_010"

# --------------------------------------------------------------------------- application context

#: The DICOM Application Context Name (PS3.7 Annex A.2.1); the only one defined.
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"

# --------------------------------------------------------------------------- services (PS3.4)

#: Verification SOP Class (PS3.4 Annex A), C-ECHO.
VERIFICATION = "1.2.840.10008.1.1"
#: Storage Commitment Push Model SOP Class (PS3.4 Annex J).
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Modality Worklist Information Model - FIND (PS3.4 Annex K).
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
#: Modality Performed Procedure Step SOP Class (PS3.4 Annex F), N-CREATE / N-SET.
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"
#: Modality Performed Procedure Step Retrieve SOP Class (retired).
MODALITY_PERFORMED_PROCEDURE_STEP_RETRIEVE = "1.2.840.10008.3.1.2.3.4"
#: Modality Performed Procedure Step Notification SOP Class (retired).
MODALITY_PERFORMED_PROCEDURE_STEP_NOTIFICATION = "1.2.840.10008.3.1.2.3.5"

# Query/Retrieve (PS3.4 Annex C)
PATIENT_ROOT_QR_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_QR_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_QR_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_QR_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_QR_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_QR_GET = "1.2.840.10008.5.1.4.1.2.2.3"
#: Patient/Study Only Query/Retrieve Information Model (retired).
PATIENT_STUDY_ONLY_QR_FIND = "1.2.840.10008.5.1.4.1.2.3.1"
PATIENT_STUDY_ONLY_QR_MOVE = "1.2.840.10008.5.1.4.1.2.3.2"
PATIENT_STUDY_ONLY_QR_GET = "1.2.840.10008.5.1.4.1.2.3.3"

# --------------------------------------------------------------------------- common storage

COMPUTED_RADIOGRAPHY_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DIGITAL_XRAY_IMAGE_STORAGE_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DIGITAL_XRAY_IMAGE_STORAGE_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
DIGITAL_MAMMOGRAPHY_XRAY_IMAGE_STORAGE_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
DIGITAL_MAMMOGRAPHY_XRAY_IMAGE_STORAGE_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
DIGITAL_INTRA_ORAL_XRAY_IMAGE_STORAGE_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.3"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
ULTRASOUND_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
ULTRASOUND_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_SINGLE_BIT_SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7.1"
MULTIFRAME_GRAYSCALE_BYTE_SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7.2"
MULTIFRAME_GRAYSCALE_WORD_SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"
MULTIFRAME_TRUE_COLOR_SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7.4"
GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1"
XRAY_ANGIOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.12.1"
XRAY_RADIOFLUOROSCOPIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.12.2"
BREAST_TOMOSYNTHESIS_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.13.1.3"
NUCLEAR_MEDICINE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
RAW_DATA_STORAGE = "1.2.840.10008.5.1.4.1.1.66"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
VL_ENDOSCOPIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.1"
VL_PHOTOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.4"
BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
KEY_OBJECT_SELECTION_DOCUMENT_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"
ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
POSITRON_EMISSION_TOMOGRAPHY_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
ENHANCED_PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.130"
RT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.1"
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"

# --------------------------------------------------------------------------- transfer syntaxes

#: The default transfer syntax every AE supports (PS3.5 A.1); also the command-set encoding.
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.98"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
#: Retired in PS3.5 but still met in the field.
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE_8BIT = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
MPEG2_MAIN_PROFILE_MAIN_LEVEL = "1.2.840.10008.1.2.4.100"
MPEG4_AVC_H264_HIGH_PROFILE_LEVEL_4_1 = "1.2.840.10008.1.2.4.102"
HEVC_MAIN_PROFILE_LEVEL_5_1 = "1.2.840.10008.1.2.4.107"
HEVC_MAIN_10_PROFILE_LEVEL_5_1 = "1.2.840.10008.1.2.4.108"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

#: Native (unencapsulated) encodings, in our order of preference when proposing: explicit VR
#: first (it keeps the VRs of private and unknown elements), then the default syntax.
UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)

#: The commonly used compressed encodings: image compression (encapsulated pixel data) and the
#: deflated data set encoding.
COMPRESSED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    JPEG_BASELINE_8BIT,
    JPEG_EXTENDED_12BIT,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    HTJ2K,
    RLE_LOSSLESS,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
)

#: Every transfer syntax named in this module (what a storage SCP that keeps data sets as
#: received can accept).
ALL_TRANSFER_SYNTAXES: tuple[str, ...] = (
    *UNCOMPRESSED_TRANSFER_SYNTAXES,
    ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN,
    *COMPRESSED_TRANSFER_SYNTAXES,
    MPEG2_MAIN_PROFILE_MAIN_LEVEL,
    MPEG4_AVC_H264_HIGH_PROFILE_LEVEL_4_1,
    HEVC_MAIN_PROFILE_LEVEL_5_1,
    HEVC_MAIN_10_PROFILE_LEVEL_5_1,
)

# --------------------------------------------------------------------------- storage SOP classes

# Dictionary names that contain "Storage" but are not storage SOP classes (used with C-STORE):
# the storage commitment services and the DICOMDIR "Media Storage Directory Storage", which
# exists only on media (PS3.10) and is never sent over the network.
_NOT_STORAGE_UIDS = frozenset(
    {
        "1.2.840.10008.1.3.10",  # Media Storage Directory Storage
    }
)


@lru_cache(maxsize=1)
def storage_sop_classes() -> tuple[str, ...]:
    """All storage SOP class UIDs known to pydicom, in dictionary order (PS3.4 Annex B, PS3.6).

    A UID qualifies when pydicom's UID dictionary lists it as a "SOP Class" whose name contains
    the word "Storage" ("... Image Storage", "... Storage - For Processing", "... Storage -
    Trial", "Hardcopy ... Storage SOP Class"), except the Storage Commitment SOP classes and the
    media-only DICOMDIR class.  Retired storage classes are included: peers still send them.
    The result is computed once and cached.
    """
    # Imported here so that importing the protocol package stays cheap.
    from pydicom._uid_dict import UID_dictionary

    result = []
    for uid, entry in UID_dictionary.items():
        name, kind = entry[0], entry[1]
        if kind != "SOP Class" or uid in _NOT_STORAGE_UIDS:
            continue
        words = name.replace("-", " ").split()
        if "Storage" in words and "Commitment" not in words:
            result.append(str(uid))
    return tuple(result)


@lru_cache(maxsize=1)
def _storage_set() -> frozenset[str]:
    return frozenset(storage_sop_classes())


def is_storage_sop_class(uid: str) -> bool:
    """True if *uid* is one of :func:`storage_sop_classes`."""
    return uid in _storage_set()
