/*
 * test_pyrandom.c — dx__pyrand against CPython 3.11's random.Random.
 *
 * Every expected number below was printed by Python 3.11.7: for each seed a
 * fresh random.Random(seed) runs one operation (random() x5, getrandbits(k)
 * for k = 1..64, randint over the ri_lo/ri_hi ranges, shuffle(list(range(n))),
 * sample(range(n), k), choice(range(7)) x10), then getrandbits(32) once more.
 * That last value (the "tail") proves the operation drew exactly as many
 * words from the generator as Python did, which is what keeps every later
 * draw in step.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "pyrandom.h"

typedef struct seed_case {
    int64_t seed;
    double random5[5];
    uint32_t u32[5];
    uint64_t bits[64];
    uint32_t bits_tail;
    int64_t randint[26];
    uint32_t randint_tail;
    size_t shuf10[10];
    uint32_t shuf10_tail;
    size_t shuf100[100];
    uint32_t shuf100_tail;
    size_t s20_5[5];
    uint32_t s20_5_tail;
    size_t s1000_16[16];
    uint32_t s1000_16_tail;
    size_t s50_50[50];
    uint32_t s50_50_tail;
    size_t choice7[10];
    uint32_t choice_tail;
} seed_case;

/* random.Random(seed).sample(range(n), k), then the tail. */
typedef struct sample_case {
    int64_t seed;
    size_t n, k;
    size_t idx[300];
    uint32_t tail;
} sample_case;

/* clang-format off */
static const int64_t ri_lo[26] = {INT64_C(0), INT64_C(0), INT64_C(0), INT64_C(0), INT64_C(0), INT64_C(0), INT64_C(0), INT64_C(0), INT64_C(-5), INT64_C(-5), INT64_C(-5), INT64_C(-5), INT64_C(1), INT64_C(1), INT64_C(1), INT64_MIN, INT64_MIN, INT64_MIN, INT64_C(7), INT64_MIN, INT64_MIN, INT64_C(0), INT64_C(0), INT64_C(-1000), INT64_C(-1000), INT64_C(-1000)};
static const int64_t ri_hi[26] = {INT64_C(9), INT64_C(9), INT64_C(9), INT64_C(9), INT64_C(9), INT64_C(9), INT64_C(9), INT64_C(9), INT64_C(5), INT64_C(5), INT64_C(5), INT64_C(5), INT64_C(1099511627776), INT64_C(1099511627776), INT64_C(1099511627776), INT64_C(9223372036854775807), INT64_C(9223372036854775807), INT64_C(9223372036854775807), INT64_C(7), INT64_C(-9223372036854775807), INT64_C(-9223372036854775807), INT64_C(9223372036854775807), INT64_C(9223372036854775807), INT64_C(1000), INT64_C(1000), INT64_C(1000)};
static const seed_case cases[] = {
    {.seed = INT64_C(0),
     .random5 = {0x1.b0580f98a7dbep-1, 0x1.84129978f9c1ap-1, 0x1.aeaa51052e978p-2, 0x1.092178fb945a6p-2, 0x1.05c5ccdf19707p-1},
     .u32 = {3626764237u, 1654615998u, 3255389356u, 3823568514u, 1806341205u},
     .bits = {UINT64_C(1), UINT64_C(1), UINT64_C(6), UINT64_C(14), UINT64_C(13), UINT64_C(2), UINT64_C(33), UINT64_C(247), UINT64_C(261), UINT64_C(497), UINT64_C(829), UINT64_C(3761), UINT64_C(6420), UINT64_C(13596), UINT64_C(9938), UINT64_C(63425), UINT64_C(62468), UINT64_C(93860), UINT64_C(305860), UINT64_C(934973), UINT64_C(1904450), UINT64_C(916215), UINT64_C(4233620), UINT64_C(2336625), UINT64_C(9456908), UINT64_C(9378180), UINT64_C(101442323), UINT64_C(25455938), UINT64_C(331984327), UINT64_C(858351976), UINT64_C(537958267), UINT64_C(4240245955), UINT64_C(8202297706), UINT64_C(12810966069), UINT64_C(20659725726), UINT64_C(12464707851), UINT64_C(14216975577), UINT64_C(20314472699), UINT64_C(467716949020), UINT64_C(363714941482), UINT64_C(1230388484183), UINT64_C(1555210669556), UINT64_C(2780708594338), UINT64_C(11268322956985), UINT64_C(7197991573436), UINT64_C(38882195506113), UINT64_C(62304844337158), UINT64_C(146749864080286), UINT64_C(35060936843203), UINT64_C(1034102733426106), UINT64_C(2062634630745766), UINT64_C(420056451792040), UINT64_C(7566867883266284), UINT64_C(12794786597129393), UINT64_C(28284325986896460), UINT64_C(45055150402573953), UINT64_C(88183662935991621), UINT64_C(238672988321029759), UINT64_C(192039334539114282), UINT64_C(841953877580378474), UINT64_C(1622489236798216138), UINT64_C(290463707049702376), UINT64_C(8458007108886578636), UINT64_C(4089715063379223119)}, .bits_tail = 1024847607u,
     .randint = {INT64_C(6), INT64_C(6), INT64_C(0), INT64_C(4), INT64_C(8), INT64_C(7), INT64_C(6), INT64_C(4), INT64_C(2), INT64_C(0), INT64_C(4), INT64_C(-2), INT64_C(307110291575), INT64_C(306153162356), INT64_C(209404584570), INT64_C(5523002631603973692), INT64_C(7418652392550711558), INT64_C(-3132308384630861270), INT64_C(7), INT64_C(-9223372036854775807), INT64_C(-9223372036854775807), INT64_C(8799277236024914180), INT64_C(4805234989534244506), INT64_C(-873), INT64_C(648), INT64_C(881)}, .randint_tail = 2356645542u,
     .shuf10 = {7, 8, 1, 5, 3, 4, 2, 0, 9, 6}, .shuf10_tail = 1537810351u,
     .shuf100 = {23, 8, 11, 7, 48, 13, 1, 91, 94, 54, 16, 63, 52, 41, 80, 2, 47, 87, 78, 66, 19, 6, 24, 10, 59, 30, 22, 29, 83, 37, 93, 81, 43, 99, 86, 28, 34, 88, 44, 14, 84, 70, 4, 20, 15, 21, 31, 76, 57, 67, 73, 50, 69, 25, 98, 46, 96, 0, 72, 35, 58, 92, 3, 95, 56, 90, 26, 40, 55, 89, 75, 71, 60, 42, 9, 82, 39, 18, 77, 68, 32, 79, 12, 85, 36, 17, 64, 27, 74, 45, 61, 38, 51, 62, 65, 33, 5, 53, 97, 49}, .shuf100_tail = 385792672u,
     .s20_5 = {12, 13, 1, 8, 15}, .s20_5_tail = 1739178872u,
     .s1000_16 = {864, 394, 776, 911, 430, 41, 265, 988, 523, 497, 414, 940, 802, 849, 310, 991}, .s1000_16_tail = 2046968324u,
     .s50_50 = {24, 48, 26, 2, 16, 32, 31, 25, 19, 30, 22, 37, 13, 44, 8, 18, 35, 6, 45, 29, 17, 39, 42, 41, 4, 9, 3, 46, 21, 10, 15, 40, 23, 11, 38, 5, 49, 20, 34, 33, 7, 47, 27, 0, 12, 36, 14, 28, 1, 43}, .s50_50_tail = 2628077981u,
     .choice7 = {6, 3, 6, 3, 0, 2, 4, 3, 3, 6}, .choice_tail = 3564191072u},
    {.seed = INT64_C(1),
     .random5 = {0x1.132d8f91b7584p-3, 0x1.b1e2d5b3584f8p-1, 0x1.870d778409f13p-1, 0x1.0530d08f17f5cp-2, 0x1.fb5355e16737ap-2},
     .u32 = {577090037u, 2444712010u, 3639700191u, 3445702192u, 3280387012u},
     .bits = {UINT64_C(0), UINT64_C(2), UINT64_C(6), UINT64_C(12), UINT64_C(24), UINT64_C(4), UINT64_C(32), UINT64_C(30), UINT64_C(253), UINT64_C(779), UINT64_C(920), UINT64_C(1934), UINT64_C(5337), UINT64_C(6219), UINT64_C(25844), UINT64_C(13759), UINT64_C(12302), UINT64_C(127888), UINT64_C(14862), UINT64_C(936710), UINT64_C(1752726), UINT64_C(1634976), UINT64_C(3630313), UINT64_C(10191118), UINT64_C(25577875), UINT64_C(51483077), UINT64_C(282669), UINT64_C(186786213), UINT64_C(239115429), UINT64_C(285970256), UINT64_C(1549495423), UINT64_C(3443818037), UINT64_C(5277493553), UINT64_C(4059906722), UINT64_C(12461536057), UINT64_C(131383004), UINT64_C(86008635065), UINT64_C(2325348894), UINT64_C(485069952074), UINT64_C(753256536527), UINT64_C(2131234066143), UINT64_C(3192973677813), UINT64_C(4638689408903), UINT64_C(13435609860349), UINT64_C(33043064120992), UINT64_C(38905943264532), UINT64_C(48650095651897), UINT64_C(190512855912927), UINT64_C(428372387825833), UINT64_C(1072133185245844), UINT64_C(2086307378438314), UINT64_C(1874306640402805), UINT64_C(8253028069769886), UINT64_C(16612673897876039), UINT64_C(3602891909457747), UINT64_C(45349654238825863), UINT64_C(104287372192469808), UINT64_C(85428715687081149), UINT64_C(428394882029233392), UINT64_C(1032528131005317878), UINT64_C(2244166908279731112), UINT64_C(2309530967541328375), UINT64_C(8920940196447031804), UINT64_C(9365730164212708441)}, .bits_tail = 3564976141u,
     .randint = {INT64_C(2), INT64_C(9), INT64_C(1), INT64_C(4), INT64_C(1), INT64_C(7), INT64_C(7), INT64_C(7), INT64_C(5), INT64_C(1), INT64_C(-2), INT64_C(-4), INT64_C(62224870531), INT64_C(950861988494), INT64_C(7589884250), INT64_C(-1007428432199280040), INT64_C(5567713808534132990), INT64_C(8213794561484772545), INT64_C(7), INT64_MIN, INT64_MIN, INT64_C(169801152120619550), INT64_C(6377047045578648633), INT64_C(-528), INT64_C(386), INT64_C(-552)}, .randint_tail = 3268245658u,
     .shuf10 = {6, 8, 9, 7, 5, 3, 0, 4, 1, 2}, .shuf10_tail = 3387541014u,
     .shuf100 = {53, 37, 65, 51, 4, 20, 38, 9, 10, 81, 44, 36, 84, 50, 96, 90, 66, 16, 80, 33, 24, 52, 91, 99, 64, 5, 58, 76, 39, 79, 23, 94, 30, 73, 25, 47, 31, 45, 19, 87, 42, 68, 95, 21, 7, 67, 46, 82, 11, 6, 41, 86, 88, 70, 18, 78, 71, 59, 43, 61, 22, 14, 35, 93, 56, 28, 98, 54, 27, 89, 1, 69, 74, 2, 85, 40, 13, 75, 29, 34, 92, 0, 77, 55, 49, 3, 62, 12, 26, 48, 83, 60, 57, 63, 15, 32, 8, 97, 72, 17}, .shuf100_tail = 724106992u,
     .s20_5 = {4, 18, 2, 8, 3}, .s20_5_tail = 2127877499u,
     .s1000_16 = {137, 582, 867, 821, 782, 64, 261, 120, 507, 779, 460, 483, 667, 388, 807, 214}, .s1000_16_tail = 403123852u,
     .s50_50 = {8, 36, 4, 16, 7, 31, 28, 30, 41, 24, 13, 6, 44, 1, 40, 27, 0, 43, 17, 23, 25, 45, 18, 3, 10, 33, 35, 42, 20, 37, 22, 12, 38, 39, 19, 49, 26, 34, 32, 11, 14, 46, 5, 48, 29, 21, 9, 47, 15, 2}, .s50_50_tail = 3597370014u,
     .choice7 = {1, 4, 6, 6, 6, 0, 2, 0, 3, 6}, .choice_tail = 1930549411u},
    {.seed = INT64_C(42),
     .random5 = {0x1.4762f307200c5p-1, 0x1.99c6b5eeb2060p-6, 0x1.19a1491f589dcp-2, 0x1.c922b623b8c1cp-3, 0x1.7912c1468f47ep-1},
     .u32 = {2746317213u, 478163327u, 107420369u, 3184935163u, 1181241943u},
     .bits = {UINT64_C(1), UINT64_C(0), UINT64_C(0), UINT64_C(11), UINT64_C(8), UINT64_C(15), UINT64_C(28), UINT64_C(35), UINT64_C(377), UINT64_C(104), UINT64_C(1385), UINT64_C(3033), UINT64_C(7308), UINT64_C(8935), UINT64_C(2848), UINT64_C(38698), UINT64_C(55302), UINT64_C(8331), UINT64_C(15622), UINT64_C(98246), UINT64_C(458517), UINT64_C(975850), UINT64_C(4239227), UINT64_C(10100198), UINT64_C(890399), UINT64_C(37664518), UINT64_C(26687537), UINT64_C(192205051), UINT64_C(348904049), UINT64_C(753041955), UINT64_C(1170252923), UINT64_C(1801823908), UINT64_C(946785248), UINT64_C(6825844140), UINT64_C(29246281099), UINT64_C(51567519519), UINT64_C(24935803837), UINT64_C(118962602874), UINT64_C(151785220214), UINT64_C(236890980656), UINT64_C(1679148444259), UINT64_C(448122261369), UINT64_C(3341882896657), UINT64_C(6314017318807), UINT64_C(12102562833427), UINT64_C(18612686277123), UINT64_C(6115205051775), UINT64_C(129316009522128), UINT64_C(70272263011973), UINT64_C(1038415602523468), UINT64_C(177439609692435), UINT64_C(1320356922165489), UINT64_C(5662286581849394), UINT64_C(15950879833673594), UINT64_C(13029276619690689), UINT64_C(13855854739413439), UINT64_C(10023954183803376), UINT64_C(190596174753506713), UINT64_C(445643557048912526), UINT64_C(1135883078528750669), UINT64_C(1972228384002752305), UINT64_C(3995950625880289016), UINT64_C(3506045623077649104), UINT64_C(8363943803604256569)}, .bits_tail = 2730243887u,
     .randint = {INT64_C(1), INT64_C(0), INT64_C(4), INT64_C(3), INT64_C(3), INT64_C(2), INT64_C(1), INT64_C(8), INT64_C(-4), INT64_C(4), INT64_C(1), INT64_C(-5), INT64_C(201991441007), INT64_C(512040151180), INT64_C(921463507191), INT64_C(3655026764538670788), INT64_C(-4097550492872562570), INT64_C(-7337925179656695943), INT64_C(7), INT64_MIN, INT64_C(-9223372036854775807), INT64_C(6344863178936378387), INT64_C(4879548657232103939), INT64_C(652), INT64_C(-912), INT64_C(494)}, .randint_tail = 1973214822u,
     .shuf10 = {7, 3, 2, 8, 5, 6, 9, 4, 0, 1}, .shuf10_tail = 2536146025u,
     .shuf100 = {42, 41, 91, 9, 65, 50, 1, 70, 15, 78, 73, 10, 55, 56, 72, 45, 48, 92, 76, 37, 30, 21, 32, 96, 80, 49, 83, 26, 87, 33, 8, 47, 59, 63, 74, 44, 98, 52, 85, 12, 36, 23, 39, 40, 18, 66, 61, 60, 7, 34, 99, 46, 2, 51, 16, 38, 58, 68, 22, 62, 24, 5, 6, 67, 82, 19, 79, 43, 90, 20, 0, 95, 57, 93, 53, 89, 25, 71, 84, 77, 64, 29, 27, 88, 97, 4, 54, 75, 11, 69, 86, 13, 17, 28, 31, 35, 94, 3, 14, 81}, .shuf100_tail = 906164396u,
     .s20_5 = {3, 0, 8, 7, 16}, .s20_5_tail = 599310825u,
     .s1000_16 = {654, 114, 25, 759, 281, 250, 228, 142, 754, 104, 692, 758, 913, 558, 89, 604}, .s1000_16_tail = 1812140441u,
     .s50_50 = {40, 7, 1, 17, 15, 14, 8, 6, 34, 5, 37, 27, 2, 47, 49, 13, 44, 32, 36, 46, 42, 22, 20, 28, 30, 41, 48, 33, 18, 43, 0, 35, 24, 10, 38, 39, 3, 12, 21, 31, 16, 29, 9, 26, 45, 4, 11, 19, 23, 25}, .s50_50_tail = 4179500364u,
     .choice7 = {5, 0, 0, 5, 2, 1, 1, 1, 5, 0}, .choice_tail = 2906402157u},
    {.seed = INT64_C(-3),
     .random5 = {0x1.e759ff97b7508p-3, 0x1.16a5368858d8dp-1, 0x1.7ad586f53dadep-2, 0x1.353501de56e4ap-1, 0x1.405e69652cae3p-1},
     .u32 = {1022050301u, 2545373330u, 2337446730u, 560161641u, 1588945316u},
     .bits = {UINT64_C(0), UINT64_C(2), UINT64_C(4), UINT64_C(2), UINT64_C(11), UINT64_C(58), UINT64_C(77), UINT64_C(121), UINT64_C(320), UINT64_C(594), UINT64_C(134), UINT64_C(2480), UINT64_C(107), UINT64_C(14890), UINT64_C(27442), UINT64_C(30751), UINT64_C(33994), UINT64_C(144384), UINT64_C(122856), UINT64_C(201058), UINT64_C(2088018), UINT64_C(3007936), UINT64_C(3944856), UINT64_C(9076035), UINT64_C(28066988), UINT64_C(36885123), UINT64_C(63935045), UINT64_C(106605000), UINT64_C(343097093), UINT64_C(924515448), UINT64_C(323446306), UINT64_C(996097414), UINT64_C(2726705791), UINT64_C(16613128068), UINT64_C(15131948080), UINT64_C(3183652505), UINT64_C(105962905432), UINT64_C(43224685905), UINT64_C(527242584210), UINT64_C(45488426346), UINT64_C(1714985885855), UINT64_C(3620790624974), UINT64_C(2370244391264), UINT64_C(10464570774934), UINT64_C(32374255835168), UINT64_C(27276816801848), UINT64_C(110916302614665), UINT64_C(120172846063454), UINT64_C(409896195215955), UINT64_C(649544228952945), UINT64_C(2170944669003634), UINT64_C(604155593006216), UINT64_C(3292310955452381), UINT64_C(646474600989724), UINT64_C(17830050507184891), UINT64_C(18589504152302812), UINT64_C(96851349167781064), UINT64_C(224523561915141578), UINT64_C(493003982745896353), UINT64_C(485551173706714511), UINT64_C(1921867386032139536), UINT64_C(2647212637964214661), UINT64_C(4926231471730279685), UINT64_C(7518447709947652788)}, .bits_tail = 2509342356u,
     .randint = {INT64_C(3), INT64_C(9), INT64_C(8), INT64_C(2), INT64_C(5), INT64_C(9), INT64_C(7), INT64_C(9), INT64_C(-4), INT64_C(4), INT64_C(-5), INT64_C(2), INT64_C(421913238836), INT64_C(873924282545), INT64_C(507453033542), INT64_C(427617874362994100), INT64_C(-8042200428764931522), INT64_C(-1347813394122727586), INT64_C(7), INT64_MIN, INT64_C(-9223372036854775807), INT64_C(661991620512760860), INT64_C(9128987708747602683), INT64_C(-556), INT64_C(-472), INT64_C(977)}, .randint_tail = 2886395106u,
     .shuf10 = {1, 5, 6, 0, 9, 4, 7, 2, 8, 3}, .shuf10_tail = 3903345311u,
     .shuf100 = {35, 41, 45, 4, 76, 12, 0, 64, 42, 11, 81, 39, 7, 48, 78, 15, 53, 62, 9, 52, 68, 55, 63, 65, 61, 67, 95, 18, 58, 86, 99, 92, 10, 17, 72, 21, 14, 44, 37, 91, 22, 59, 83, 32, 26, 98, 40, 27, 43, 96, 13, 31, 57, 2, 6, 23, 56, 71, 28, 36, 51, 46, 25, 54, 73, 79, 34, 3, 38, 5, 20, 90, 88, 49, 66, 89, 84, 19, 50, 82, 85, 97, 87, 24, 29, 70, 33, 93, 1, 94, 8, 74, 80, 60, 77, 47, 16, 69, 75, 30}, .shuf100_tail = 2598405567u,
     .s20_5 = {7, 18, 17, 4, 11}, .s20_5_tail = 3933953013u,
     .s1000_16 = {243, 606, 557, 133, 378, 937, 618, 485, 640, 594, 67, 620, 13, 930, 857, 480}, .s1000_16_tail = 1113916996u,
     .s50_50 = {15, 37, 34, 8, 23, 38, 30, 40, 48, 4, 44, 0, 43, 16, 35, 14, 12, 41, 32, 33, 20, 27, 42, 7, 29, 28, 36, 31, 39, 2, 5, 18, 1, 9, 21, 13, 47, 24, 26, 45, 6, 10, 46, 19, 22, 3, 17, 11, 49, 25}, .s50_50_tail = 583981819u,
     .choice7 = {1, 4, 4, 1, 2, 4, 3, 5, 4, 0}, .choice_tail = 2601030205u},
    {.seed = INT64_C(1099511627783),
     .random5 = {0x1.3a3761afd4291p-1, 0x1.a13cb57c0715ap-1, 0x1.e3d88c68edf49p-1, 0x1.240a3fed28776p-1, 0x1.e758a5a01babcp-2},
     .u32 = {2635837658u, 3209733218u, 3500038837u, 4028389051u, 4058793509u},
     .bits = {UINT64_C(1), UINT64_C(2), UINT64_C(6), UINT64_C(15), UINT64_C(30), UINT64_C(40), UINT64_C(73), UINT64_C(180), UINT64_C(243), UINT64_C(256), UINT64_C(1941), UINT64_C(2521), UINT64_C(1038), UINT64_C(8467), UINT64_C(12296), UINT64_C(34166), UINT64_C(94341), UINT64_C(95198), UINT64_C(206139), UINT64_C(464497), UINT64_C(942512), UINT64_C(3621415), UINT64_C(7524547), UINT64_C(6246885), UINT64_C(7563618), UINT64_C(56536408), UINT64_C(120027950), UINT64_C(119369961), UINT64_C(403165992), UINT64_C(638201830), UINT64_C(386150226), UINT64_C(589495775), UINT64_C(7460962919), UINT64_C(16025401008), UINT64_C(20597266963), UINT64_C(699683909), UINT64_C(9675366911), UINT64_C(102026393016), UINT64_C(69293875924), UINT64_C(634446667152), UINT64_C(66946241185), UINT64_C(2490403823147), UINT64_C(1326859093511), UINT64_C(16264886012403), UINT64_C(12258062046877), UINT64_C(42620215996215), UINT64_C(123971987984216), UINT64_C(107528924072516), UINT64_C(325531966306605), UINT64_C(395144885442741), UINT64_C(587846972113676), UINT64_C(2140611500132930), UINT64_C(6591234384556884), UINT64_C(11521643517419347), UINT64_C(20350947669004674), UINT64_C(35783299152053410), UINT64_C(30541822503270215), UINT64_C(45330566360492260), UINT64_C(558380677185255039), UINT64_C(168548922233025120), UINT64_C(1297224780906493073), UINT64_C(1790311132873327098), UINT64_C(7549130344217158714), UINT64_C(13660836525183655575)}, .bits_tail = 1500749938u,
     .randint = {INT64_C(9), INT64_C(9), INT64_C(7), INT64_C(4), INT64_C(9), INT64_C(2), INT64_C(8), INT64_C(6), INT64_C(3), INT64_C(0), INT64_C(1), INT64_C(2), INT64_C(819896354549), INT64_C(978798470616), INT64_C(301420011174), INT64_C(-8642835471556914107), INT64_C(4701535600713763221), INT64_C(1607383339684528054), INT64_C(7), INT64_MIN, INT64_C(-9223372036854775807), INT64_C(7047081858639759940), INT64_C(6473997765856204981), INT64_C(615), INT64_C(-466), INT64_C(952)}, .randint_tail = 2041443377u,
     .shuf10 = {0, 5, 2, 3, 6, 1, 8, 4, 7, 9}, .shuf10_tail = 1688693473u,
     .shuf100 = {8, 77, 21, 34, 38, 35, 75, 18, 25, 11, 2, 65, 7, 14, 89, 29, 55, 54, 41, 80, 58, 27, 33, 70, 63, 88, 49, 39, 5, 42, 79, 45, 82, 59, 0, 74, 94, 26, 51, 72, 68, 84, 10, 13, 12, 31, 71, 36, 15, 40, 43, 87, 62, 30, 69, 86, 22, 53, 64, 52, 24, 1, 97, 61, 37, 44, 6, 19, 3, 91, 92, 83, 9, 93, 4, 20, 96, 67, 17, 23, 76, 85, 28, 47, 57, 56, 50, 46, 98, 48, 66, 16, 99, 32, 60, 90, 73, 81, 95, 78}, .shuf100_tail = 1075733234u,
     .s20_5 = {19, 18, 15, 8, 4}, .s20_5_tail = 2219701726u,
     .s1000_16 = {628, 765, 834, 960, 967, 654, 584, 722, 487, 256, 970, 630, 129, 529, 384, 533}, .s1000_16_tail = 3091373771u,
     .s50_50 = {39, 47, 40, 36, 45, 30, 16, 49, 8, 33, 24, 48, 23, 25, 28, 35, 37, 14, 34, 42, 19, 5, 4, 38, 43, 26, 18, 31, 1, 41, 2, 11, 27, 17, 0, 13, 9, 29, 15, 22, 46, 7, 44, 3, 32, 12, 10, 21, 6, 20}, .s50_50_tail = 2426021920u,
     .choice7 = {4, 5, 6, 5, 4, 5, 3, 2, 4, 1}, .choice_tail = 2219701726u},
};
static const sample_case bounds[] = {
    {2, 21, 5, {1, 2, 19, 11, 5}, 3160967032u},
    {2, 22, 5, {1, 2, 11, 5, 21}, 3667190760u},
    {0, 85, 21, {49, 53, 5, 33, 65, 62, 51, 38, 61, 45, 74, 27, 64, 17, 36, 71, 12, 32, 18, 39, 68}, 3134603515u},
    {0, 86, 21, {49, 53, 5, 33, 65, 62, 51, 38, 61, 45, 74, 27, 64, 17, 36, 12, 79, 32, 68, 77, 18}, 1332073689u},
    {2, 85, 6, {7, 11, 10, 46, 21, 39}, 1080542040u},
    {2, 86, 6, {7, 11, 10, 46, 21, 85}, 3667190760u},
    {0, 3, 0, {0}, 3626764237u},
    {0, 1, 1, {0}, 3255389356u},
    {42, 2000, 300, {1309, 228, 51, 1518, 563, 501, 457, 285, 1508, 209, 1385, 1516, 1827, 1116, 178, 1209, 864, 65, 61, 191, 447, 476, 1034, 1232, 54, 1149, 407, 1466, 1330, 1436, 859, 451, 919, 1206, 569, 1657, 1780, 13, 1554, 1650, 326, 1429, 865, 696, 318, 440, 1960, 1563, 689, 189, 778, 198, 735, 1735, 704, 1236, 541, 1652, 88, 1494, 940, 1098, 255, 1992, 1888, 775, 161, 1130, 600, 1698, 1287, 1266, 1813, 1764, 740, 1182, 393, 1442, 142, 93, 1354, 466, 1583, 592, 163, 1751, 1774, 206, 928, 1301, 1708, 747, 333, 758, 727, 429, 1372, 546, 1437, 1918, 1399, 1327, 146, 1247, 1300, 350, 1093, 1493, 334, 946, 777, 552, 1895, 1310, 1409, 1140, 449, 1402, 664, 1726, 1573, 1589, 114, 469, 1683, 1648, 646, 821, 548, 135, 432, 1870, 1931, 1161, 1794, 1470, 644, 435, 1342, 1022, 810, 1811, 1872, 1316, 939, 292, 542, 505, 1525, 1103, 538, 1529, 1197, 877, 1838, 1195, 817, 741, 283, 1043, 1010, 186, 1547, 96, 1763, 224, 313, 1285, 327, 1622, 1393, 1221, 130, 788, 781, 1220, 958, 1083, 514, 1988, 1133, 1762, 1930, 23, 1476, 234, 1396, 1812, 1099, 1537, 1574, 1312, 601, 890, 323, 929, 6, 1953, 1478, 1793, 1473, 539, 1990, 1025, 1560, 365, 1039, 1869, 217, 1782, 1280, 611, 1723, 1308, 765, 1561, 330, 1104, 1952, 1594, 1889, 1086, 1881, 1, 1226, 663, 1000, 39, 229, 1902, 743, 1799, 1703, 629, 490, 118, 493, 1798, 1939, 175, 1498, 995, 1671, 141, 1557, 1090, 1568, 257, 262, 1351, 973, 1125, 338, 1080, 1786, 1242, 866, 1975, 433, 1546, 1412, 411, 1460, 638, 1375, 764, 897, 1842, 1059, 924, 247, 507, 460, 131, 692, 43, 1204, 1134, 471, 1205, 14, 145, 1449, 1292, 120, 468, 138, 1854, 64, 1760, 676, 1052, 487, 570, 1370, 994, 438, 270, 1481, 1915}, 3789806435u},
    {7, 1099511627776, 3, {868231286071, 105874957392, 208460025899}, 1570621944u},
};
static const struct { int64_t seed; uint32_t u32[3]; } more_seeds[] = {
    {INT64_MIN, {2377109768u, 1691753470u, 4039908392u}},
    {INT64_C(9223372036854775807), {1359979423u, 2819855560u, 2711238091u}},
    {INT64_C(4294967296), {485306839u, 1508871100u, 1794561286u}},
    {INT64_C(4294967295), {2728839433u, 2661025012u, 872737089u}},
    {INT64_C(4294967297), {991850117u, 2151679444u, 2200792185u}},
    {INT64_C(-4294967296), {485306839u, 1508871100u, 1794561286u}},
};
static const uint32_t seed42_u32_2000 = 1557724698u;
/* clang-format on */

#define NCASES (sizeof cases / sizeof cases[0])

static uint32_t tail_of(dx__pyrand *r)
{
    return (uint32_t)dx__pyrand_getrandbits(r, 32);
}

Test(pyrandom, seeding_matches_python_for_small_large_and_negative_seeds,
     .timeout = 10)
{
    for (size_t c = 0; c < NCASES; c++) {
        dx__pyrand r;
        dx__pyrand_seed(&r, cases[c].seed);
        for (int i = 0; i < 5; i++)
            cr_expect_eq(dx__pyrand_u32(&r), cases[c].u32[i],
                         "seed %lld output %d", (long long)cases[c].seed, i);
    }
    for (size_t c = 0; c < sizeof more_seeds / sizeof more_seeds[0]; c++) {
        dx__pyrand r;
        dx__pyrand_seed(&r, more_seeds[c].seed);
        for (int i = 0; i < 3; i++)
            cr_expect_eq(dx__pyrand_u32(&r), more_seeds[c].u32[i],
                         "seed %lld output %d", (long long)more_seeds[c].seed,
                         i);
    }
}

Test(pyrandom, negative_seed_gives_the_stream_of_its_absolute_value,
     .timeout = 10)
{
    dx__pyrand a, b, c;
    dx__pyrand_seed(&a, -3);
    dx__pyrand_seed(&b, 3);
    dx__pyrand_seed(&c, 4);
    uint32_t x = dx__pyrand_u32(&a);
    cr_expect_eq(x, dx__pyrand_u32(&b));
    cr_expect_neq(x, dx__pyrand_u32(&c));
}

Test(pyrandom, stream_stays_in_step_across_state_regenerations, .timeout = 10)
{
    dx__pyrand r;
    dx__pyrand_seed(&r, 42);
    for (int i = 0; i < 1999; i++)
        (void)dx__pyrand_u32(&r);
    cr_expect_eq(dx__pyrand_u32(&r), seed42_u32_2000);
}

Test(pyrandom, random_matches_python_to_the_last_bit, .timeout = 10)
{
    for (size_t c = 0; c < NCASES; c++) {
        dx__pyrand r;
        dx__pyrand_seed(&r, cases[c].seed);
        for (int i = 0; i < 5; i++) {
            double v = dx__pyrand_random(&r);
            cr_expect(v == cases[c].random5[i], "seed %lld #%d: %a != %a",
                      (long long)cases[c].seed, i, v, cases[c].random5[i]);
            cr_expect(v >= 0.0 && v < 1.0);
        }
    }
}

Test(pyrandom, getrandbits_1_to_64_match_python, .timeout = 10)
{
    for (size_t c = 0; c < NCASES; c++) {
        dx__pyrand r;
        dx__pyrand_seed(&r, cases[c].seed);
        for (int k = 1; k <= 64; k++) {
            uint64_t v = dx__pyrand_getrandbits(&r, k);
            cr_expect_eq(v, cases[c].bits[k - 1], "seed %lld k=%d",
                         (long long)cases[c].seed, k);
            if (k < 64)
                cr_expect_lt(v, UINT64_C(1) << k);
        }
        cr_expect_eq(tail_of(&r), cases[c].bits_tail);
    }
}

Test(pyrandom, randint_matches_python_including_the_full_int64_range,
     .timeout = 10)
{
    for (size_t c = 0; c < NCASES; c++) {
        dx__pyrand r;
        dx__pyrand_seed(&r, cases[c].seed);
        for (size_t i = 0; i < 26; i++) {
            int64_t v = 0;
            cr_assert_eq(dx__pyrand_randint(&r, ri_lo[i], ri_hi[i], &v), DX_OK);
            cr_expect_eq(v, cases[c].randint[i], "seed %lld draw %zu",
                         (long long)cases[c].seed, i);
            cr_expect(v >= ri_lo[i] && v <= ri_hi[i]);
        }
        cr_expect_eq(tail_of(&r), cases[c].randint_tail);
    }
}

static void check_shuffle(const seed_case *c, size_t n, const size_t *want,
                          uint32_t tail)
{
    static int vals[100];
    void *items[100];
    for (size_t i = 0; i < n; i++)
        items[i] = &vals[i];
    dx__pyrand r;
    dx__pyrand_seed(&r, c->seed);
    dx__pyrand_shuffle(&r, items, n);
    for (size_t i = 0; i < n; i++)
        cr_expect_eq((size_t)((int *)items[i] - vals), want[i],
                     "seed %lld n=%zu position %zu", (long long)c->seed, n, i);
    cr_expect_eq(tail_of(&r), tail);
}

Test(pyrandom, shuffle_matches_python_for_10_and_100_items, .timeout = 10)
{
    for (size_t c = 0; c < NCASES; c++) {
        check_shuffle(&cases[c], 10, cases[c].shuf10, cases[c].shuf10_tail);
        check_shuffle(&cases[c], 100, cases[c].shuf100, cases[c].shuf100_tail);
    }
}

Test(pyrandom, shuffle_n_permutes_typed_arrays_like_python, .timeout = 10)
{
    for (size_t c = 0; c < NCASES; c++) {
        size_t idx[100];
        for (size_t i = 0; i < 100; i++)
            idx[i] = i;
        dx__pyrand r;
        dx__pyrand_seed(&r, cases[c].seed);
        dx__pyrand_shuffle_n(&r, idx, 100, sizeof idx[0]);
        cr_expect_arr_eq(idx, cases[c].shuf100, sizeof idx);
        cr_expect_eq(tail_of(&r), cases[c].shuf100_tail);
    }
    /* Zero or one element: Python draws nothing. */
    dx__pyrand r, fresh;
    dx__pyrand_seed(&r, 5);
    dx__pyrand_seed(&fresh, 5);
    size_t one = 9;
    dx__pyrand_shuffle_n(&r, &one, 1, sizeof one);
    dx__pyrand_shuffle(&r, NULL, 0);
    cr_expect_eq(one, 9);
    cr_expect_eq(tail_of(&r), tail_of(&fresh));
}

static void check_sample(int64_t seed, size_t n, size_t k, const size_t *want,
                         uint32_t tail)
{
    size_t out[300];
    cr_assert_leq(k, 300);
    dx__pyrand r;
    dx__pyrand_seed(&r, seed);
    cr_assert_eq(dx__pyrand_sample(&r, n, k, k ? out : NULL), DX_OK);
    for (size_t i = 0; i < k; i++)
        cr_expect_eq(out[i], want[i], "seed %lld sample(range(%zu), %zu)[%zu]",
                     (long long)seed, n, k, i);
    cr_expect_eq(tail_of(&r), tail, "seed %lld sample(range(%zu), %zu) tail",
                 (long long)seed, n, k);
}

Test(pyrandom, sample_matches_python_for_pool_and_set_methods, .timeout = 10)
{
    for (size_t c = 0; c < NCASES; c++) {
        const seed_case *s = &cases[c];
        check_sample(s->seed, 20, 5, s->s20_5, s->s20_5_tail);
        check_sample(s->seed, 1000, 16, s->s1000_16, s->s1000_16_tail);
        check_sample(s->seed, 50, 50, s->s50_50, s->s50_50_tail);
    }
}

/* Each pair straddles CPython's setsize threshold (21 for k <= 5, 85 for
 * k = 6..21): the lists differ only because the method changes. The
 * 2000/300 case redraws 33 duplicates in the set method. */
Test(pyrandom, sample_takes_pythons_method_on_both_sides_of_the_threshold,
     .timeout = 10)
{
    for (size_t c = 0; c < sizeof bounds / sizeof bounds[0]; c++)
        check_sample(bounds[c].seed, bounds[c].n, bounds[c].k, bounds[c].idx,
                     bounds[c].tail);
}

Test(pyrandom, choice_matches_python, .timeout = 10)
{
    for (size_t c = 0; c < NCASES; c++) {
        dx__pyrand r;
        dx__pyrand_seed(&r, cases[c].seed);
        for (int i = 0; i < 10; i++) {
            size_t v = 99;
            cr_assert_eq(dx__pyrand_choice(&r, 7, &v), DX_OK);
            cr_expect_eq(v, cases[c].choice7[i]);
        }
        cr_expect_eq(tail_of(&r), cases[c].choice_tail);
    }
}

Test(pyrandom, invalid_arguments_fail_without_consuming_the_stream,
     .timeout = 10)
{
    dx__pyrand r, fresh;
    dx__pyrand_seed(&r, 11);
    dx__pyrand_seed(&fresh, 11);
    size_t out[4] = {7, 7, 7, 7};
    int64_t v = 5;
    size_t ch = 5;

    cr_expect_eq(dx__pyrand_sample(&r, 3, 4, out), DX_EINVAL);
    cr_expect_eq(out[0], 7);
    cr_expect_eq(dx__pyrand_sample(&r, 3, 2, NULL), DX_EINVAL);
    cr_expect_eq(dx__pyrand_sample(&r, 0, 0, NULL), DX_OK);
    cr_expect_eq(dx__pyrand_sample(&r, 3, 0, NULL), DX_OK);
    cr_expect_eq(dx__pyrand_randint(&r, 2, 1, &v), DX_EINVAL);
    cr_expect_eq(dx__pyrand_randint(&r, INT64_MAX, INT64_MIN, &v), DX_EINVAL);
    cr_expect_eq(dx__pyrand_randint(&r, 1, 2, NULL), DX_EINVAL);
    cr_expect_eq(v, 5);
    cr_expect_eq(dx__pyrand_choice(&r, 0, &ch), DX_EINVAL);
    cr_expect_eq(dx__pyrand_choice(&r, 3, NULL), DX_EINVAL);
    cr_expect_eq(ch, 5);
    cr_expect_eq(dx__pyrand_getrandbits(&r, 0), 0);
    cr_expect_eq(dx__pyrand_getrandbits(&r, -1), 0);
    cr_expect_eq(dx__pyrand_getrandbits(&r, 65), 0);
    cr_expect_eq(dx__pyrand_below(&r, 0), 0);

    for (int i = 0; i < 3; i++)
        cr_expect_eq(dx__pyrand_u32(&r), dx__pyrand_u32(&fresh));
}

static long fail_at, n_allocs;
static void *f_malloc(size_t size, void *ud)
{
    (void)ud;
    return n_allocs++ == fail_at ? NULL : malloc(size);
}
static void *f_realloc(void *p, size_t size, void *ud)
{
    (void)ud;
    return n_allocs++ == fail_at ? NULL : realloc(p, size);
}
static void f_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}
static const dx_allocator failing = {f_malloc, f_realloc, f_free, NULL};

Test(pyrandom, sample_out_of_memory_is_enomem_and_consumes_nothing,
     .timeout = 10)
{
    /* (50, 50) takes the pool method, (1000, 16) the set method. */
    static const size_t ns[2] = {50, 1000}, ks[2] = {50, 16};
    dx_set_allocator(&failing);
    for (int m = 0; m < 2; m++) {
        dx__pyrand r, fresh;
        dx__pyrand_seed(&r, 0);
        dx__pyrand_seed(&fresh, 0);
        size_t out[50];
        fail_at = 0;
        n_allocs = 0;
        cr_expect_eq(dx__pyrand_sample(&r, ns[m], ks[m], out), DX_ENOMEM);
        cr_expect_eq(dx__pyrand_u32(&r), dx__pyrand_u32(&fresh));
        /* Once memory is there again the same call succeeds. */
        fail_at = -1;
        dx__pyrand_seed(&r, 0);
        cr_expect_eq(dx__pyrand_sample(&r, ns[m], ks[m], out), DX_OK);
        cr_expect_eq(out[0],
                     m == 0 ? cases[0].s50_50[0] : cases[0].s1000_16[0]);
    }
    dx_set_allocator(NULL);
}
