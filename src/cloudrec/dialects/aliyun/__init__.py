"""Alibaba Cloud ApsaraVideo Live (product `live`, 2016-11-01): the ARTC cloud recording actions."""
