"""The one metadata every package's tables register on (imported by migrations)."""

from contact_center.models import Base

target_metadata = Base.metadata
