"""The one metadata every package's tables register on (imported by migrations)."""

import routing.models  # noqa: F401  (registers the routing tables)
import tickets.models  # noqa: F401  (registers the ticket tables)
from contact_center.models import Base

target_metadata = Base.metadata
