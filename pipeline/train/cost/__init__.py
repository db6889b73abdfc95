"""Learned class costs (survey Table 17): CoSen (:mod:`.cosen`) and a differential-evolution cost
search (:mod:`.search`); both predict with the cost-scaled decision of :mod:`.costs`."""
