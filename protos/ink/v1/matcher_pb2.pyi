import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FingerPosition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINGER_UNKNOWN: _ClassVar[FingerPosition]
    RIGHT_THUMB: _ClassVar[FingerPosition]
    RIGHT_INDEX: _ClassVar[FingerPosition]
    RIGHT_MIDDLE: _ClassVar[FingerPosition]
    RIGHT_RING: _ClassVar[FingerPosition]
    RIGHT_LITTLE: _ClassVar[FingerPosition]
    LEFT_THUMB: _ClassVar[FingerPosition]
    LEFT_INDEX: _ClassVar[FingerPosition]
    LEFT_MIDDLE: _ClassVar[FingerPosition]
    LEFT_RING: _ClassVar[FingerPosition]
    LEFT_LITTLE: _ClassVar[FingerPosition]

class MinutiaKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MINUTIA_OTHER: _ClassVar[MinutiaKind]
    MINUTIA_ENDING: _ClassVar[MinutiaKind]
    MINUTIA_BIFURCATION: _ClassVar[MinutiaKind]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_HIT: _ClassVar[Decision]
    DECISION_NO_HIT: _ClassVar[Decision]
FINGER_UNKNOWN: FingerPosition
RIGHT_THUMB: FingerPosition
RIGHT_INDEX: FingerPosition
RIGHT_MIDDLE: FingerPosition
RIGHT_RING: FingerPosition
RIGHT_LITTLE: FingerPosition
LEFT_THUMB: FingerPosition
LEFT_INDEX: FingerPosition
LEFT_MIDDLE: FingerPosition
LEFT_RING: FingerPosition
LEFT_LITTLE: FingerPosition
MINUTIA_OTHER: MinutiaKind
MINUTIA_ENDING: MinutiaKind
MINUTIA_BIFURCATION: MinutiaKind
DECISION_UNSPECIFIED: Decision
DECISION_HIT: Decision
DECISION_NO_HIT: Decision

class Minutia(_message.Message):
    __slots__ = ("x", "y", "angle", "kind", "quality")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    ANGLE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    angle: float
    kind: MinutiaKind
    quality: int
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., angle: _Optional[float] = ..., kind: _Optional[_Union[MinutiaKind, str]] = ..., quality: _Optional[int] = ...) -> None: ...

class Template(_message.Message):
    __slots__ = ("finger", "width", "height", "ppi", "minutiae", "image_quality", "record")
    FINGER_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PPI_FIELD_NUMBER: _ClassVar[int]
    MINUTIAE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_QUALITY_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    finger: FingerPosition
    width: int
    height: int
    ppi: float
    minutiae: _containers.RepeatedCompositeFieldContainer[Minutia]
    image_quality: int
    record: bytes
    def __init__(self, finger: _Optional[_Union[FingerPosition, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., ppi: _Optional[float] = ..., minutiae: _Optional[_Iterable[_Union[Minutia, _Mapping]]] = ..., image_quality: _Optional[int] = ..., record: _Optional[bytes] = ...) -> None: ...

class Context(_message.Message):
    __slots__ = ("operator_id", "device_id", "reason", "case_reference")
    OPERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CASE_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    operator_id: str
    device_id: str
    reason: str
    case_reference: str
    def __init__(self, operator_id: _Optional[str] = ..., device_id: _Optional[str] = ..., reason: _Optional[str] = ..., case_reference: _Optional[str] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("probes", "max_candidates", "context", "target_fpir")
    PROBES_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPIR_FIELD_NUMBER: _ClassVar[int]
    probes: _containers.RepeatedCompositeFieldContainer[Template]
    max_candidates: int
    context: Context
    target_fpir: float
    def __init__(self, probes: _Optional[_Iterable[_Union[Template, _Mapping]]] = ..., max_candidates: _Optional[int] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., target_fpir: _Optional[float] = ...) -> None: ...

class FingerScore(_message.Message):
    __slots__ = ("probe_index", "finger", "score")
    PROBE_INDEX_FIELD_NUMBER: _ClassVar[int]
    FINGER_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    probe_index: int
    finger: FingerPosition
    score: float
    def __init__(self, probe_index: _Optional[int] = ..., finger: _Optional[_Union[FingerPosition, str]] = ..., score: _Optional[float] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("subject_id", "score", "matched_finger", "fingers")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FINGER_FIELD_NUMBER: _ClassVar[int]
    FINGERS_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    score: float
    matched_finger: FingerPosition
    fingers: _containers.RepeatedCompositeFieldContainer[FingerScore]
    def __init__(self, subject_id: _Optional[str] = ..., score: _Optional[float] = ..., matched_finger: _Optional[_Union[FingerPosition, str]] = ..., fingers: _Optional[_Iterable[_Union[FingerScore, _Mapping]]] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("decision", "candidates", "threshold", "expected_fpir", "gallery_fingers", "gallery_subjects", "comparisons", "elapsed_ms", "search_id")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FPIR_FIELD_NUMBER: _ClassVar[int]
    GALLERY_FINGERS_FIELD_NUMBER: _ClassVar[int]
    GALLERY_SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    threshold: float
    expected_fpir: float
    gallery_fingers: int
    gallery_subjects: int
    comparisons: int
    elapsed_ms: float
    search_id: str
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., threshold: _Optional[float] = ..., expected_fpir: _Optional[float] = ..., gallery_fingers: _Optional[int] = ..., gallery_subjects: _Optional[int] = ..., comparisons: _Optional[int] = ..., elapsed_ms: _Optional[float] = ..., search_id: _Optional[str] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("subject_id", "probes", "context", "target_fmr")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FMR_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    probes: _containers.RepeatedCompositeFieldContainer[Template]
    context: Context
    target_fmr: float
    def __init__(self, subject_id: _Optional[str] = ..., probes: _Optional[_Iterable[_Union[Template, _Mapping]]] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., target_fmr: _Optional[float] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("decision", "score", "threshold", "matched_finger", "fingers", "elapsed_ms", "search_id")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FINGER_FIELD_NUMBER: _ClassVar[int]
    FINGERS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    score: float
    threshold: float
    matched_finger: FingerPosition
    fingers: _containers.RepeatedCompositeFieldContainer[FingerScore]
    elapsed_ms: float
    search_id: str
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., matched_finger: _Optional[_Union[FingerPosition, str]] = ..., fingers: _Optional[_Iterable[_Union[FingerScore, _Mapping]]] = ..., elapsed_ms: _Optional[float] = ..., search_id: _Optional[str] = ...) -> None: ...

class Subject(_message.Message):
    __slots__ = ("subject_id", "fingers", "labels", "expires_at", "enrolled_at", "enrolled")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FINGERS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_AT_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    fingers: _containers.RepeatedCompositeFieldContainer[Template]
    labels: _containers.ScalarMap[str, str]
    expires_at: _timestamp_pb2.Timestamp
    enrolled_at: _timestamp_pb2.Timestamp
    enrolled: _containers.RepeatedCompositeFieldContainer[EnrolledFinger]
    def __init__(self, subject_id: _Optional[str] = ..., fingers: _Optional[_Iterable[_Union[Template, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., enrolled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., enrolled: _Optional[_Iterable[_Union[EnrolledFinger, _Mapping]]] = ...) -> None: ...

class EnrolledFinger(_message.Message):
    __slots__ = ("finger", "minutiae", "image_quality")
    FINGER_FIELD_NUMBER: _ClassVar[int]
    MINUTIAE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_QUALITY_FIELD_NUMBER: _ClassVar[int]
    finger: FingerPosition
    minutiae: int
    image_quality: int
    def __init__(self, finger: _Optional[_Union[FingerPosition, str]] = ..., minutiae: _Optional[int] = ..., image_quality: _Optional[int] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("subject", "replace", "context")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    subject: Subject
    replace: bool
    context: Context
    def __init__(self, subject: _Optional[_Union[Subject, _Mapping]] = ..., replace: _Optional[bool] = ..., context: _Optional[_Union[Context, _Mapping]] = ...) -> None: ...

class EnrollBatch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[EnrollRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[EnrollRequest, _Mapping]]] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("subject_id", "fingers", "replaced")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FINGERS_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    fingers: int
    replaced: bool
    def __init__(self, subject_id: _Optional[str] = ..., fingers: _Optional[int] = ..., replaced: _Optional[bool] = ...) -> None: ...

class EnrollFailure(_message.Message):
    __slots__ = ("index", "subject_id", "code", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    subject_id: str
    code: str
    message: str
    def __init__(self, index: _Optional[int] = ..., subject_id: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class EnrollSummary(_message.Message):
    __slots__ = ("enrolled", "failed", "failures", "subject_ids")
    ENROLLED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    enrolled: int
    failed: int
    failures: _containers.RepeatedCompositeFieldContainer[EnrollFailure]
    subject_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, enrolled: _Optional[int] = ..., failed: _Optional[int] = ..., failures: _Optional[_Iterable[_Union[EnrollFailure, _Mapping]]] = ..., subject_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoveRequest(_message.Message):
    __slots__ = ("subject_id", "context")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    context: Context
    def __init__(self, subject_id: _Optional[str] = ..., context: _Optional[_Union[Context, _Mapping]] = ...) -> None: ...

class RemoveResponse(_message.Message):
    __slots__ = ("subject_id", "fingers")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FINGERS_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    fingers: int
    def __init__(self, subject_id: _Optional[str] = ..., fingers: _Optional[int] = ...) -> None: ...

class GetSubjectRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("subjects", "fingers", "comparator", "version", "uptime_s", "searches", "default_target_fpir", "hit_threshold")
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    FINGERS_FIELD_NUMBER: _ClassVar[int]
    COMPARATOR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    SEARCHES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TARGET_FPIR_FIELD_NUMBER: _ClassVar[int]
    HIT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    subjects: int
    fingers: int
    comparator: str
    version: str
    uptime_s: float
    searches: int
    default_target_fpir: float
    hit_threshold: float
    def __init__(self, subjects: _Optional[int] = ..., fingers: _Optional[int] = ..., comparator: _Optional[str] = ..., version: _Optional[str] = ..., uptime_s: _Optional[float] = ..., searches: _Optional[int] = ..., default_target_fpir: _Optional[float] = ..., hit_threshold: _Optional[float] = ...) -> None: ...
