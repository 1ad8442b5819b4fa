"""A built-in list of common English words for random sentences (no downloads needed).

Grouped by part of speech so that random sentences have a plausible rhythm (function
words are short and unstressed, content words carry the stress and the big mouth shapes).
"""

DETERMINERS = "the a this that my your our their his her every some each one no".split()

ADJECTIVES = """
big small old new good bad long short high low young early late great little own other
right large next strong best free sure clear full special easy hard deep warm cold dark
bright quiet loud happy sad quick slow soft rough green blue red yellow white black brown
golden silver heavy light fresh simple strange common modern ancient gentle brave calm
proud wild busy empty rich poor fair kind sharp smooth sweet bitter round square narrow
""".split()

NOUNS = """
time year people way day man woman child world life hand part place case week company
system program question work government number night point home water room mother area
money story fact month lot study book eye job word business issue side kind head house
service friend father power hour game line end member law car city name team minute idea
kid body information back face others level office door health person art war history
party result change morning reason research girl guy moment air teacher force education
garden river mountain window table paper music picture window letter market village ocean
forest island bridge station planet voice doctor engine bottle basket pocket shadow winter
summer valley harbor castle thunder rabbit monkey tiger dolphin violin rocket journey
""".split()

VERBS = """
sees finds takes makes knows gives tells feels brings keeps holds turns starts shows hears
plays moves likes lives believes writes opens walks wins offers remembers loves considers
appears buys waits serves sends builds stays reaches kills raises passes sells decides
returns explains hopes develops carries breaks receives agrees supports hits produces eats
covers catches draws chooses watches follows paints visits pushes pulls throws climbs
""".split()

ADVERBS = """
quickly slowly often never always sometimes today tomorrow again soon early later here
there really almost nearly finally suddenly gently quietly loudly happily carefully
""".split()

PREPOSITIONS = "in on at with from into over under near behind beside across through".split()

CONJUNCTIONS = "and but so because while when although".split()
