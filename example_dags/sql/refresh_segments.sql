-- Both segment tables; the refresh task runs every statement, then commits once.
{% include "sql/refresh_segment_vip.sql" %}
{% include "sql/refresh_segment_lapsed.sql" %}
