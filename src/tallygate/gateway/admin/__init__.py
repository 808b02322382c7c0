"""The admin HTTP API (`/admin/*`): keys, flags, budgets and reports, behind the admin key."""

from tallygate.gateway.admin.flags import flag_routes
from tallygate.gateway.admin.keys import admin_routes
from tallygate.gateway.admin.reports import report_routes

__all__ = ["admin_routes", "flag_routes", "report_routes"]
